package relay

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"slices"
	"unsafe"
)

// daySet is what a reconciliation holds of the stored day: one fixed-size record (dayRecord,
// 40 bytes) per payment paid that day and per refund made that day, sorted by key for binary
// search, never the documents. A row of the bill is looked up in it by its payment id and
// refund; what it lacks is read from the store by id (findings are few), and what the bill
// never marked is not in the bill.
type daySet struct {
	recs   []dayRecord
	sealed bool
}

// dayRecord is one stored payment or refund, compacted: the payment id (16 bytes, the id's hex
// decoded), the refund (an FNV-64 of its id, 0 for the payment itself), the amount, an FNV-32
// of the transaction id (0 for none), the currency and flags.
type dayRecord struct {
	id     [16]byte
	sub    uint64
	amount int64
	tx     uint32
	cur    [3]byte
	flags  uint8
}

// Record flags.
const (
	recSeen         = 1 << iota // a row of the bill matched it
	recViaReconcile             // payrelay learnt of it from an earlier reconciliation
)

// DayRecordBytes is the memory a reconciliation holds per stored payment or refund of the day
// (the README's figure).
const DayRecordBytes = 40

// refundHash names a refund within its payment; never 0 (0 is the payment itself).
func refundHash(refundID string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(refundID))
	if v := h.Sum64(); v != 0 {
		return v
	}
	return 1
}

func txHash(id string) uint32 {
	if id == "" {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	return h.Sum32() | 1
}

// refundSub is the record sub-key a bill's entry looks for.
func refundSub(e Result) uint64 {
	if e.Type == TypePaymentRefunded && e.Refund != nil {
		return refundHash(e.Refund.ID)
	}
	return 0
}

func idBytes(id string) [16]byte {
	var k [16]byte
	if b, err := hex.DecodeString(id); err == nil && len(b) == 16 {
		copy(k[:], b)
	} else {
		// Not an id payrelay made (tests): its hash stands in.
		h := fnv.New128a()
		h.Write([]byte(id))
		copy(k[:], h.Sum(nil))
	}
	return k
}

func (r *dayRecord) paymentID() string { return hex.EncodeToString(r.id[:]) }

// addPayment adds p's records of day: its payment when it was paid that day (kind paid), its
// refunds of that day (kind refund).
func (s *daySet) addPayment(p *Payment, kind, day string) {
	id := idBytes(p.ID)
	for _, n := range p.Notifications {
		switch {
		case kind == billPaid && n.Type == TypePaymentSucceeded && !p.PaidAt.IsZero() && BillDay(p.PaidAt) == day:
			r := dayRecord{id: id, amount: p.AmountMinor, tx: txHash(p.TransactionID)}
			copy(r.cur[:], p.Currency)
			if n.Via == ViaReconcile {
				r.flags |= recViaReconcile
			}
			s.recs = append(s.recs, r)
		case kind == billRefund && n.Type == TypePaymentRefunded && n.Refund != nil && BillDay(n.Refund.RefundedAt) == day:
			r := dayRecord{id: id, sub: refundHash(n.Refund.ID), amount: n.Refund.AmountMinor}
			if n.Via == ViaReconcile {
				r.flags |= recViaReconcile
			}
			s.recs = append(s.recs, r)
		}
	}
}

func compareRec(a, b *dayRecord) int {
	if c := bytes.Compare(a.id[:], b.id[:]); c != 0 {
		return c
	}
	switch {
	case a.sub < b.sub:
		return -1
	case a.sub > b.sub:
		return 1
	}
	return 0
}

// seal sorts the records and drops duplicates (a payment under two day keys); the set is then
// read only.
func (s *daySet) seal() {
	slices.SortFunc(s.recs, func(a, b dayRecord) int { return compareRec(&a, &b) })
	s.recs = slices.CompactFunc(s.recs, func(a, b dayRecord) bool { return compareRec(&a, &b) == 0 })
	s.recs = slices.Clip(s.recs)
	s.sealed = true
}

// find returns the record of payment id (sub 0) or of its refund sub, or nil.
func (s *daySet) find(id string, sub uint64) *dayRecord {
	key := dayRecord{id: idBytes(id), sub: sub}
	i, ok := slices.BinarySearchFunc(s.recs, key, func(a, b dayRecord) int { return compareRec(&a, &b) })
	if !ok {
		return nil
	}
	return &s.recs[i]
}

// differs says how a bill's entry contradicts the record it matched, or "".
func (r *dayRecord) differs(e Result) string {
	if e.Type == TypePaymentRefunded {
		if r.amount != e.Refund.AmountMinor {
			return fmt.Sprintf("the bill refunds %d, payrelay recorded %d for refund %s", e.Refund.AmountMinor, r.amount, e.Refund.ID)
		}
		return ""
	}
	q := e.Payment
	switch {
	case r.amount != q.AmountMinor || string(bytes.TrimRight(r.cur[:], "\x00")) != q.Currency:
		return fmt.Sprintf("the bill states %d %s, payrelay stored %d %s", q.AmountMinor, q.Currency, r.amount, bytes.TrimRight(r.cur[:], "\x00"))
	case r.tx != 0 && q.TransactionID != "" && r.tx != txHash(q.TransactionID):
		return fmt.Sprintf("the bill's transaction %s is not the stored one", q.TransactionID)
	}
	return ""
}

// DayRecordSize is the size of one record as the compiler lays it out (DayRecordBytes states it).
func DayRecordSize() int { return int(unsafe.Sizeof(dayRecord{})) }
