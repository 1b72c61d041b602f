package store

import (
	"context"
	"fmt"
	"time"

	"cloud.google.com/go/firestore"
	firestorepb "cloud.google.com/go/firestore/apiv1/firestorepb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// CountOnBillDay implements relay.DayFinder: a COUNT() aggregation of the same query, served
// by the same index (Firestore bills it as one read per 1,000 index entries).
func (s *Firestore) CountOnBillDay(ctx context.Context, key string) (int, error) {
	return s.count(ctx, "firestore.CountOnBillDay", s.coll.Where("bill_days", "array-contains", key))
}

// count runs q's COUNT() aggregation: one read per thousand index entries, not one per
// document.
func (s *Firestore) count(ctx context.Context, op string, q firestore.Query) (int, error) {
	res, err := q.NewAggregationQuery().WithCount("n").Get(ctx)
	if err != nil {
		return 0, classify(op, err)
	}
	s.counter.read()
	v, ok := res["n"]
	if !ok {
		return 0, fmt.Errorf("%s: no count in the answer", op)
	}
	switch n := v.(type) {
	case int64:
		return int(n), nil
	case *firestorepb.Value:
		return int(n.GetIntegerValue()), nil
	}
	return 0, fmt.Errorf("%s: a count of type %T", op, v)
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
	RefundNo    string `firestore:"refund_no,omitempty"`
	BillMinor   int64  `firestore:"bill_minor"`
	StoredMinor int64  `firestore:"stored_minor"`
	// SettledMinor: absent on reports written before it existed (read as 0: none stated).
	SettledMinor int64  `firestore:"settled_minor,omitempty"`
	Action       string `firestore:"action"`
	Reason       string `firestore:"reason"`
}

func (s *Firestore) reports() *firestore.CollectionRef {
	return s.client.Collection(s.coll.ID + "-reports")
}

// PutReport implements relay.ReportStore: the earlier report's run count read and the new
// report written in one transaction, so two runs at once count two.
func (s *Firestore) PutReport(ctx context.Context, r *relay.Report) error {
	d := reportDoc{Provider: r.Provider, Merchant: r.Merchant, Day: r.Day, BillPayments: r.BillPayments, BillRefunds: r.BillRefunds,
		Matched: r.Matched, Counts: map[string]int{}, Findings: []findingDoc{}, By: utf8(r.By), RanAt: r.RanAt}
	for k, n := range r.Counts {
		d.Counts[string(k)] = n
	}
	for _, f := range r.Findings {
		d.Findings = append(d.Findings, findingDoc{Kind: string(f.Kind), OrderID: f.OrderID, PaymentID: f.PaymentID, RefundID: f.RefundID, RefundNo: f.RefundNo,
			BillMinor: f.BillMinor, StoredMinor: f.StoredMinor, SettledMinor: f.SettledMinor, Action: f.Action, Reason: utf8(f.Reason)})
	}
	ref := s.reports().Doc(r.ID)
	err := s.client.RunTransaction(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		d.Runs = 1
		s.counter.read()
		snap, err := tx.Get(ref)
		switch {
		case err == nil:
			runs, err := snap.DataAt("runs")
			if err != nil {
				return err
			}
			n, _ := runs.(int64)
			d.Runs = int(n) + 1
		case status.Code(err) != codes.NotFound:
			return err
		}
		s.counter.write()
		return tx.Set(ref, d)
	})
	if err != nil {
		return classify("firestore.PutReport", err)
	}
	r.Runs = d.Runs
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
			RefundID: f.RefundID, RefundNo: f.RefundNo, BillMinor: f.BillMinor, StoredMinor: f.StoredMinor, SettledMinor: f.SettledMinor, Action: f.Action, Reason: f.Reason})
	}
	return r, nil
}
