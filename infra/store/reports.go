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
func (s *Firestore) OnBillDay(ctx context.Context, key, after, before string, limit int) ([]*relay.Payment, error) {
	q := s.coll.Where("bill_days", "array-contains", key).OrderBy(firestore.DocumentID, firestore.Asc).Limit(limit)
	if after != "" {
		q = q.StartAfter(after)
	}
	if before != "" {
		q = q.EndBefore(before)
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
// "<collection>-reports", one document per provider, merchant and day; its findings are in the
// report's subcollection "findings", a document per page of relay.FindingsPage ("p00000", ...).
type reportDoc struct {
	Provider     string         `firestore:"provider"`
	Merchant     string         `firestore:"merchant"`
	Day          string         `firestore:"day"`
	BillPayments int            `firestore:"bill_payments"`
	BillRefunds  int            `firestore:"bill_refunds"`
	Matched      int            `firestore:"matched"`
	Counts       map[string]int `firestore:"counts"`
	// Pages is how many pages of findings the last run wrote; RelayJob the job relaying what it
	// found missing, if one does.
	Pages    int       `firestore:"finding_pages"`
	RelayJob string    `firestore:"relay_job"`
	Runs     int       `firestore:"runs"`
	By       string    `firestore:"by"`
	RanAt    time.Time `firestore:"ran_at"`
}

// pageDoc is one page of a report's findings.
type pageDoc struct {
	Findings []findingDoc `firestore:"findings"`
}

type findingDoc struct {
	Kind        string `firestore:"kind"`
	OrderID     string `firestore:"order_id"`
	PaymentID   string `firestore:"payment_id"`
	RefundID    string `firestore:"refund_id"`
	RefundNo    string `firestore:"refund_no,omitempty"`
	BillMinor   int64  `firestore:"bill_minor"`
	StoredMinor int64  `firestore:"stored_minor"`
	// SettledMinor: absent where the bill states no settlement apart (read as 0).
	SettledMinor int64  `firestore:"settled_minor,omitempty"`
	Action       string `firestore:"action"`
	Reason       string `firestore:"reason"`
}

func (s *Firestore) reports() *firestore.CollectionRef {
	return s.client.Collection(s.coll.ID + "-reports")
}

func pageRef(report *firestore.DocumentRef, page int) *firestore.DocumentRef {
	return report.Collection("findings").Doc(fmt.Sprintf("p%05d", page))
}

// PutReport implements relay.ReportStore: the findings' pages written first (in batches, as
// many as there are), then the report, its run count read and written in one transaction so two
// runs at once count two, then the pages an earlier, longer run left beyond these deleted. A
// reader meanwhile sees the earlier report with some of the new pages: the report says how many
// pages are its own.
func (s *Firestore) PutReport(ctx context.Context, r *relay.Report) error {
	d := reportDoc{Provider: r.Provider, Merchant: r.Merchant, Day: r.Day, BillPayments: r.BillPayments, BillRefunds: r.BillRefunds,
		Matched: r.Matched, Counts: map[string]int{}, By: utf8(r.By), RanAt: r.RanAt, RelayJob: r.RelayJob}
	for k, n := range r.Counts {
		d.Counts[string(k)] = n
	}
	ref := s.reports().Doc(r.ID)
	d.Pages = (len(r.Findings) + relay.FindingsPage - 1) / relay.FindingsPage
	for first := 0; first < d.Pages; first += maxBatch {
		batch := s.client.Batch()
		for page := first; page < min(first+maxBatch, d.Pages); page++ {
			var pd pageDoc
			for _, f := range r.Findings[page*relay.FindingsPage : min((page+1)*relay.FindingsPage, len(r.Findings))] {
				pd.Findings = append(pd.Findings, findingDoc{Kind: string(f.Kind), OrderID: f.OrderID, PaymentID: f.PaymentID, RefundID: f.RefundID, RefundNo: f.RefundNo,
					BillMinor: f.BillMinor, StoredMinor: f.StoredMinor, SettledMinor: f.SettledMinor, Action: f.Action, Reason: utf8(f.Reason)})
			}
			s.counter.write()
			batch.Set(pageRef(ref, page), pd)
		}
		if _, err := batch.Commit(ctx); err != nil {
			return classify("firestore.PutReport pages", err)
		}
	}
	before := 0
	err := s.client.RunTransaction(ctx, func(ctx context.Context, tx *firestore.Transaction) error {
		d.Runs, before = 1, 0
		s.counter.read()
		snap, err := tx.Get(ref)
		switch {
		case err == nil:
			var old reportDoc
			if err := snap.DataTo(&old); err != nil {
				return err
			}
			d.Runs, before = old.Runs+1, old.Pages
		case status.Code(err) != codes.NotFound:
			return err
		}
		s.counter.write()
		return tx.Set(ref, d)
	})
	if err != nil {
		return classify("firestore.PutReport", err)
	}
	for page := d.Pages; page < before; page++ {
		s.counter.write()
		if _, err := pageRef(ref, page).Delete(ctx); err != nil {
			return classify("firestore.PutReport stale page", err)
		}
	}
	r.Runs = d.Runs
	return nil
}

// maxBatch is how many writes one batch holds (Firestore's limit is 500).
const maxBatch = 400

// GetReport implements relay.ReportStore: the report and every page of its findings.
func (s *Firestore) GetReport(ctx context.Context, id string) (*relay.Report, error) {
	r, pages, err := s.GetReportPage(ctx, id, 0)
	if err != nil {
		return nil, err
	}
	for page := 1; page < pages; page++ {
		p, err := s.findingsPage(ctx, s.reports().Doc(id), page)
		if err != nil {
			return nil, err
		}
		r.Findings = append(r.Findings, p...)
	}
	return r, nil
}

// GetReportPage implements relay.ReportStore.
func (s *Firestore) GetReportPage(ctx context.Context, id string, page int) (*relay.Report, int, error) {
	s.counter.read()
	ref := s.reports().Doc(id)
	snap, err := ref.Get(ctx)
	if err != nil {
		return nil, 0, classify("firestore.GetReport", err)
	}
	r, pages, err := decodeReport(snap)
	if err != nil || page < 0 || page >= pages {
		return r, pages, err
	}
	r.Findings, err = s.findingsPage(ctx, ref, page)
	return r, pages, err
}

// findingsPage reads one page of a report's findings.
func (s *Firestore) findingsPage(ctx context.Context, report *firestore.DocumentRef, page int) ([]relay.Finding, error) {
	s.counter.read()
	snap, err := pageRef(report, page).Get(ctx)
	if err != nil {
		return nil, classify("firestore.GetReport page", err)
	}
	var pd pageDoc
	if err := snap.DataTo(&pd); err != nil {
		return nil, fmt.Errorf("firestore.DataTo report %s page %d: %w", report.ID, page, err)
	}
	out := make([]relay.Finding, 0, len(pd.Findings))
	for _, f := range pd.Findings {
		out = append(out, relay.Finding{Kind: relay.FindingKind(f.Kind), OrderID: f.OrderID, PaymentID: f.PaymentID,
			RefundID: f.RefundID, RefundNo: f.RefundNo, BillMinor: f.BillMinor, StoredMinor: f.StoredMinor, SettledMinor: f.SettledMinor, Action: f.Action, Reason: f.Reason})
	}
	return out, nil
}

// StoredFindingPages counts the pages of findings stored under report id (what an operator
// would see in the console; a check that a shorter run left no stale page).
func (s *Firestore) StoredFindingPages(ctx context.Context, id string) (int, error) {
	return s.count(ctx, "firestore.StoredFindingPages", s.reports().Doc(id).Collection("findings").Query)
}

// ListReports implements relay.ReportStore: newest day first, on the automatic single-field
// index of day; the reports without their findings (their counts are whole).
func (s *Firestore) ListReports(ctx context.Context, limit int) ([]*relay.Report, error) {
	docs, err := s.reports().OrderBy("day", firestore.Desc).Limit(limit).Documents(ctx).GetAll()
	if err != nil {
		return nil, classify("firestore.ListReports", err)
	}
	var out []*relay.Report
	for _, snap := range docs {
		s.counter.read()
		r, _, err := decodeReport(snap)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func decodeReport(snap *firestore.DocumentSnapshot) (*relay.Report, int, error) {
	var d reportDoc
	if err := snap.DataTo(&d); err != nil {
		return nil, 0, fmt.Errorf("firestore.DataTo report %s: %w", snap.Ref.ID, err)
	}
	r := &relay.Report{ID: snap.Ref.ID, Provider: d.Provider, Merchant: d.Merchant, Day: d.Day, BillPayments: d.BillPayments,
		BillRefunds: d.BillRefunds, Matched: d.Matched, Counts: map[relay.FindingKind]int{}, Runs: d.Runs, By: d.By, RanAt: d.RanAt.UTC(), RelayJob: d.RelayJob}
	for k, n := range d.Counts {
		r.Counts[relay.FindingKind(k)] = n
	}
	return r, d.Pages, nil
}
