package relaytest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// SyntheticDay is a store's day of N payments of 6.48 CNY paid at 20:00 Beijing time on Day,
// order ids Prefix-000000000 on, made page by page as they are read (the store's own memory
// is not the reconciliation's): a day of millions without holding it. It serves one reader in
// order (Config.DayPartitions 1), trusting `after` to be the last id it served.
type SyntheticDay struct {
	Provider, Merchant, Prefix, Day string
	N                               int
	// Planted differences from a bill of the same N: payments the store lacks, amounts it holds
	// otherwise, and payments it holds past the bill's N.
	Lacks  map[int]bool
	Amount map[int]int64
	Extra  int

	mu   sync.Mutex
	next int
}

// Order is the order id of the day's i-th payment.
func (d *SyntheticDay) Order(i int) string { return fmt.Sprintf("%s-%09d", d.Prefix, i) }

func (d *SyntheticDay) key() string { return relay.BillDayKey("paid", d.Provider, d.Merchant, d.Day) }

// CountOnBillDay implements relay.DayFinder.
func (d *SyntheticDay) CountOnBillDay(_ context.Context, key string) (int, error) {
	if key != d.key() {
		return 0, nil
	}
	return d.N + d.Extra - len(d.Lacks), nil
}

// OnBillDay implements relay.DayFinder.
func (d *SyntheticDay) OnBillDay(_ context.Context, key, after, _ string, limit int) ([]*relay.Payment, error) {
	if key != d.key() {
		return nil, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if after == "" {
		d.next = 0
	}
	day, err := time.ParseInLocation(time.DateOnly, d.Day, relay.BillZone)
	if err != nil {
		return nil, err
	}
	at := day.Add(20 * time.Hour)
	var out []*relay.Payment
	for ; d.next < d.N+d.Extra && len(out) < limit; d.next++ {
		if d.Lacks[d.next] {
			continue
		}
		order := d.Order(d.next)
		amount := int64(648)
		if a, ok := d.Amount[d.next]; ok {
			amount = a
		}
		out = append(out, &relay.Payment{ID: relay.PaymentID(relay.EnvProduction, d.Provider, d.Merchant, order), Provider: d.Provider, Environment: relay.EnvProduction,
			Merchant: d.Merchant, OrderID: order, AmountMinor: amount, Currency: "CNY", PaidAt: at, Game: "sword",
			Notifications: []relay.Notification{{Key: relay.KeyPaid, Type: relay.TypePaymentSucceeded, State: relay.StateDelivered, Via: relay.ViaNotify}}})
	}
	return out, nil
}
