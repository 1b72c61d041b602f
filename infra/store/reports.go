package store

import (
	"context"
	"fmt"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/payrelay/payrelay/functions/relay"
)

var (
	_ relay.ReportStore = (*Firestore)(nil)
	_ relay.DayFinder   = (*Firestore)(nil)
)

// OnBillDay implements relay.DayFinder: an array-contains query on bill_days in document id
// order, a page at a time. Firestore's automatic single-field index on bill_days serves it
// (its entries are ordered by document name within a value), so it needs no composite index.
func (s *Firestore) OnBillDay(ctx context.Context, key, after string, limit int) ([]*relay.Payment, error) {
	q := s.coll.Where("bill_days", "array-contains", key).OrderBy(firestore.DocumentID, firestore.Asc).Limit(limit)
	if after != "" {
		q = q.StartAfter(after)
	}
	docs, err := q.Documents(ctx).GetAll()
	if err != nil {
		return nil, classify("firestore.OnBillDay", err)
	}
	return s.decode(docs)
}

// reportDoc is a reconciliation report as stored, in the payments collection's sibling
// "<collection>-reports", one document per provider, merchant and day.
type reportDoc struct {
	Provider     string         `firestore:"provider"`
	Merchant     string         `firestore:"merchant"`
	Day          string         `firestore:"day"`
	BillPayments int            `firestore:"bill_payments"`
	BillRefunds  int            `firestore:"bill_refunds"`
	Matched      int            `firestore:"matched"`
	Counts       map[string]int `firestore:"counts"`
	Findings     []findingDoc   `firestore:"findings"`
	Runs         int            `firestore:"runs"`
	By           string         `firestore:"by"`
	RanAt        time.Time      `firestore:"ran_at"`
}

type findingDoc struct {
	Kind        string `firestore:"kind"`
	OrderID     string `firestore:"order_id"`
	PaymentID   string `firestore:"payment_id"`
	RefundID    string `firestore:"refund_id"`
	BillMinor   int64  `firestore:"bill_minor"`
	StoredMinor int64  `firestore:"stored_minor"`
	Action      string `firestore:"action"`
	Reason      string `firestore:"reason"`
}

func (s *Firestore) reports() *firestore.CollectionRef {
	return s.client.Collection(s.coll.ID + "-reports")
}

// PutReport implements relay.ReportStore.
func (s *Firestore) PutReport(ctx context.Context, r *relay.Report) error {
	d := reportDoc{Provider: r.Provider, Merchant: r.Merchant, Day: r.Day, BillPayments: r.BillPayments, BillRefunds: r.BillRefunds,
		Matched: r.Matched, Counts: map[string]int{}, Findings: []findingDoc{}, Runs: r.Runs, By: utf8(r.By), RanAt: r.RanAt}
	for k, n := range r.Counts {
		d.Counts[string(k)] = n
	}
	for _, f := range r.Findings {
		d.Findings = append(d.Findings, findingDoc{Kind: string(f.Kind), OrderID: f.OrderID, PaymentID: f.PaymentID, RefundID: f.RefundID,
			BillMinor: f.BillMinor, StoredMinor: f.StoredMinor, Action: f.Action, Reason: utf8(f.Reason)})
	}
	s.counter.write()
	if _, err := s.reports().Doc(r.ID).Set(ctx, d); err != nil {
		return classify("firestore.PutReport", err)
	}
	return nil
}

// GetReport implements relay.ReportStore.
func (s *Firestore) GetReport(ctx context.Context, id string) (*relay.Report, error) {
	s.counter.read()
	snap, err := s.reports().Doc(id).Get(ctx)
	if err != nil {
		return nil, classify("firestore.GetReport", err)
	}
	return decodeReport(snap)
}

// ListReports implements relay.ReportStore: newest day first, on the automatic single-field
// index of day.
func (s *Firestore) ListReports(ctx context.Context, limit int) ([]*relay.Report, error) {
	docs, err := s.reports().OrderBy("day", firestore.Desc).Limit(limit).Documents(ctx).GetAll()
	if err != nil {
		return nil, classify("firestore.ListReports", err)
	}
	var out []*relay.Report
	for _, snap := range docs {
		s.counter.read()
		r, err := decodeReport(snap)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func decodeReport(snap *firestore.DocumentSnapshot) (*relay.Report, error) {
	var d reportDoc
	if err := snap.DataTo(&d); err != nil {
		return nil, fmt.Errorf("firestore.DataTo report %s: %w", snap.Ref.ID, err)
	}
	r := &relay.Report{ID: snap.Ref.ID, Provider: d.Provider, Merchant: d.Merchant, Day: d.Day, BillPayments: d.BillPayments,
		BillRefunds: d.BillRefunds, Matched: d.Matched, Counts: map[relay.FindingKind]int{}, Runs: d.Runs, By: d.By, RanAt: d.RanAt.UTC()}
	for k, n := range d.Counts {
		r.Counts[relay.FindingKind(k)] = n
	}
	for _, f := range d.Findings {
		r.Findings = append(r.Findings, relay.Finding{Kind: relay.FindingKind(f.Kind), OrderID: f.OrderID, PaymentID: f.PaymentID,
			RefundID: f.RefundID, BillMinor: f.BillMinor, StoredMinor: f.StoredMinor, Action: f.Action, Reason: f.Reason})
	}
	return r, nil
}
