package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Daily reconciliation: a provider's bill of one day (its record of what was paid and refunded)
// against what payrelay stored. A payment or refund the bill shows and payrelay lacks is
// ingested through the notification path (idempotent, so a run repeated or killed half-way is
// safe to run again); one whose amount differs is a conflict, not relayed; one payrelay holds
// that the bill lacks is reported. Each run's report is stored.

// BillZone is the clock the providers' bills cut their days in: Alipay's and WeChat Pay's day
// runs from 00:00 to 24:00 China Standard Time.
var BillZone = time.FixedZone("CST", 8*3600)

// BillDay is the bill day (yyyy-mm-dd, BillZone) of a time.
func BillDay(t time.Time) string { return t.In(BillZone).Format(time.DateOnly) }

// Bill is one provider's bill of one day for one merchant account, read as a stream of rows.
type Bill struct {
	Provider string
	// Environment is the account's: a sandbox Alipay app's bill lists sandbox payments.
	Environment Environment
	// Merchant is the account the bill was asked for. Merchants are every merchant id under
	// which an order of this bill may be stored (Alipay bills an account, which several apps
	// may share); Merchants[0] is Merchant.
	Merchant  string
	Merchants []string
	Day       string // yyyy-mm-dd, BillZone
	// Rows reads the bill once, row by row, calling yield for each: a paid trade
	// (TypePaymentSucceeded) or a refund (TypePaymentRefunded, with this refund's amount) with
	// what ingesting it needs, a line that cannot be relayed as it stands, or a refund not
	// settled yet. It returns yield's error, or the bill's own once it is read whole (a WeChat
	// Pay bill whose SHA1 does not hold, a truncated file): then nothing of the run is relayed.
	// nil is an empty day.
	Rows func(yield func(BillRow) error) error
	// SettlePending, when set, asks the provider again about a refund the bill shows not
	// settled: the refund to ingest when it settled since, the state it ended in when it ended
	// without the money going back (""  while it is still processing). Nil leaves every one
	// pending.
	SettlePending func(ctx context.Context, pr PendingRefund) (settled *Result, ended string, err error)
	// FindPayment, when set, asks the provider about an order for a refund the bill shows
	// whose payment payrelay never received: a paid answer is ingested first, so the game
	// server is told the payment, then its refund. nil (or no answer) leaves the refund alone.
	FindPayment func(ctx context.Context, orderID string) (*Result, error)
}

// BillRow is one row of a bill: exactly one of its fields is set.
type BillRow struct {
	Entry      *Result
	Unreadable *Finding
	Pending    *PendingRefund
}

// RowsOf is a bill's Rows over rows held in memory (tests, small fixtures).
func RowsOf(rows ...BillRow) func(yield func(BillRow) error) error {
	return func(yield func(BillRow) error) error {
		for _, r := range rows {
			if err := yield(r); err != nil {
				return err
			}
		}
		return nil
	}
}

// EntryRows is RowsOf the entries.
func EntryRows(entries ...Result) func(yield func(BillRow) error) error {
	rows := make([]BillRow, len(entries))
	for i := range entries {
		rows[i] = BillRow{Entry: &entries[i]}
	}
	return RowsOf(rows...)
}

// PendingRefund is a refund not settled yet: RefundNo is the merchant's refund number the
// provider is asked by (WeChat Pay's out_refund_no).
type PendingRefund struct {
	OrderID, RefundID, RefundNo string
	AmountMinor                 int64
	State                       string
}

// FindingKind names what reconciliation found.
type FindingKind string

const (
	// FindingMissingPayment: the bill shows a payment payrelay had not stored; ingested.
	FindingMissingPayment FindingKind = "missing_payment"
	// FindingMissingRefund: the bill shows a refund payrelay had not stored; ingested.
	FindingMissingRefund FindingKind = "missing_refund"
	// FindingConflict: the bill and payrelay disagree on an amount (or transaction id): logged
	// at ERROR, alerted, not relayed.
	FindingConflict FindingKind = "conflict"
	// FindingNotInBill: payrelay holds a payment or refund of that day that the bill lacks.
	FindingNotInBill FindingKind = "not_in_bill"
	// FindingUnrelayable: the bill shows money payrelay cannot relay as it stands (the app is
	// routed to no game, the account's app is ambiguous, a row that cannot be read, a refund
	// that ended without the money going back): an operator must act.
	FindingUnrelayable FindingKind = "unrelayable"
	// FindingPendingRefund: a refund still processing, on the bill and when asked again:
	// later runs ask again until it settles (then relayed, or reported as ended).
	FindingPendingRefund FindingKind = "pending_refund"
)

// FindingKinds lists the kinds, in the report's order.
var FindingKinds = []FindingKind{FindingMissingPayment, FindingMissingRefund, FindingConflict, FindingNotInBill, FindingUnrelayable, FindingPendingRefund}

// ActionPending is a pending_refund's action until it settles.
const ActionPending = "pending"

// Finding is one order a reconciliation found out of step.
type Finding struct {
	Kind      FindingKind
	OrderID   string
	PaymentID string
	RefundID  string
	// RefundNo is the merchant's refund number a pending refund is asked again by.
	RefundNo    string
	BillMinor   int64 // the amount the bill states (the refund's, for a refund)
	StoredMinor int64 // the amount payrelay holds
	// SettledMinor is a refund's settlement amount where the bill states one apart from
	// BillMinor (WeChat Pay's 退款金额, net of 免充值 coupons); 0 otherwise.
	SettledMinor int64
	// Action is what payrelay did: "ingested", "ingested by an earlier run", "not relayed",
	// "reported".
	Action string
	Reason string
}

// Report is what one day's reconciliation of one merchant account found.
type Report struct {
	ID       string // provider-merchant-day
	Provider string
	Merchant string
	Day      string
	// BillPayments and BillRefunds count the bill's entries; Matched those payrelay holds
	// with the same facts.
	BillPayments, BillRefunds, Matched int
	Counts                             map[FindingKind]int
	Findings                           []Finding // every one (a page of them when read by page)
	Runs                               int       // how many runs wrote this report
	// RelayJob is the job relaying what this run found missing, when there was more than
	// ReconcileInline of it.
	RelayJob string
	By       string // who ran it (the scheduler, an operator)
	RanAt    time.Time
}

// FindingsPage is how many findings one page of a stored report holds: a report keeps every
// finding, stored and read a page at a time (a Firestore document's size bounds a page).
const FindingsPage = 500

// FindingsDetailed bounds the not_in_bill findings whose payment a run reads to name the order
// and refund (one read each); the others carry the payment id and amount only.
const FindingsDetailed = 500

// ReportID names a report.
func ReportID(provider, merchant, day string) string { return provider + "-" + merchant + "-" + day }

// ReportStore keeps reconciliation reports.
type ReportStore interface {
	// PutReport writes the report, replacing an earlier run's of the same id, and sets r.Runs
	// to the runs so far, this one included: atomically, so two runs at once count two.
	PutReport(ctx context.Context, r *Report) error
	// GetReport returns a report with every finding; ErrNotFound if none.
	GetReport(ctx context.Context, id string) (*Report, error)
	// GetReportPage returns a report with page page (from 0) of its findings, and how many
	// pages it has; ErrNotFound if none.
	GetReportPage(ctx context.Context, id string, page int) (*Report, int, error)
	// ListReports returns the newest reports (by day, then run), at most limit.
	ListReports(ctx context.Context, limit int) ([]*Report, error)
}

// DayFinder finds the payments a bill day concerns, by the keys of Payment.BillDays.
type DayFinder interface {
	// OnBillDay returns, in id order, at most limit payments whose BillDays hold key and whose
	// id sorts after after ("" for the first page) and before before ("" for no bound). A page
	// shorter than limit is the last.
	OnBillDay(ctx context.Context, key, after, before string, limit int) ([]*Payment, error)
	// CountOnBillDay counts the payments whose BillDays hold key (an aggregation, not a read
	// of each): the day's set is sized from it once, never grown by copies.
	CountOnBillDay(ctx context.Context, key string) (int, error)
}

// DayPage is how many payments one page of a day query reads. Each page is one store
// operation under the store's per-operation timeout, retried on its own, so a large merchant's
// day is read in bounded steps rather than by one query that outlasts the timeout; of each
// payment the reconciliation keeps only its facts (Payment.billFacts).
const DayPage = 300

// ErrNoReconcile: the service was built without a report store and a day finder.
var ErrNoReconcile = errors.New("relay: reconciliation is not configured")

// Bill day keys: what a payment's BillDays holds and a reconciliation queries.
const (
	billPaid   = "paid"
	billRefund = "refund"
)

// BillDayKey is the key under which a payment's payment (kind "paid") or refund ("refund") of
// a day is found.
func BillDayKey(kind, provider, merchant, day string) string {
	return kind + "|" + provider + "|" + merchant + "|" + day
}

// BillDays are the bill days the payment's money moved on, as query keys: the day it was paid
// (when payrelay has its payment notification) and the day of each refund.
func (p *Payment) BillDays() []string {
	var out []string
	add := func(k string) {
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	for _, n := range p.Notifications {
		switch {
		case n.Type == TypePaymentSucceeded && !p.PaidAt.IsZero():
			add(BillDayKey(billPaid, p.Provider, p.Merchant, BillDay(p.PaidAt)))
		case n.Type == TypePaymentRefunded && n.Refund != nil:
			add(BillDayKey(billRefund, p.Provider, p.Merchant, BillDay(n.Refund.RefundedAt)))
		}
	}
	return out
}

// Reconcile compares a bill with what payrelay stored, ingests what is missing, and stores and
// returns the report. The bill is read as a stream against a compact set of what payrelay
// stored of the day (daySet: a fixed-size record per stored payment and refund, never the
// documents), so memory grows with the stored day and the findings, not with the bill's rows.
// What the bill shows missing is staged and ingested only once the bill was read whole and
// held (its hash, its counts): nothing of an unverified bill is relayed. An error means the run
// must be repeated (a store or queue unavailable, a bill that did not hold); what it ingested
// before failing stays, and the repeat finds it ingested by this run's predecessor.
func (s *Service) Reconcile(ctx context.Context, b Bill, by string) (*Report, error) {
	if s.cfg.Reports == nil || s.cfg.Days == nil {
		return nil, ErrNoReconcile
	}
	if _, err := ParseEnvironment(string(b.Environment)); err != nil {
		return nil, fmt.Errorf("bill of %s %s: %w", b.Provider, b.Merchant, err)
	}
	if len(b.Merchants) == 0 {
		b.Merchants = []string{b.Merchant}
	}
	rep := &Report{ID: ReportID(b.Provider, b.Merchant, b.Day), Provider: b.Provider, Merchant: b.Merchant, Day: b.Day,
		Counts: map[FindingKind]int{}, By: by, RanAt: s.cfg.Clock.Now()}
	add := func(f Finding) {
		rep.Counts[f.Kind]++
		rep.Findings = append(rep.Findings, f)
	}
	// What payrelay holds of that day, under every merchant the bill covers.
	set, err := s.loadDay(ctx, b)
	if err != nil {
		return nil, fmt.Errorf("payments of %s: %w", b.Day, err)
	}
	// The bill, row by row: a row that matches a record is counted and marked; one that does
	// not is staged (findings are few where the bill is many).
	var staged []Result
	compare := func(e Result) {
		q := e.Payment
		if e.Type == TypePaymentSucceeded {
			rep.BillPayments++
		} else {
			rep.BillRefunds++
		}
		for _, m := range b.Merchants {
			hi, lo := paymentWords(b.Environment, b.Provider, m, q.OrderID)
			rec := set.findWords(hi, lo, refundSub(e))
			if rec == nil {
				continue
			}
			rec.meta |= recSeen
			reason := set.differs(rec, e)
			if reason == "" && rec.flags()&recViaReconcile == 0 {
				rep.Matched++
				return
			}
			f := Finding{OrderID: q.OrderID, PaymentID: rec.paymentID(), StoredMinor: rec.amount, BillMinor: q.AmountMinor}
			if e.Type == TypePaymentRefunded {
				f.RefundID, f.BillMinor, f.SettledMinor = e.Refund.ID, e.Refund.AmountMinor, e.Refund.SettlementMinor
			}
			if reason != "" {
				f.Kind, f.Action, f.Reason = FindingConflict, "not relayed", reason
			} else {
				f.Kind, f.Action = missingKind(e.Type), "ingested by an earlier run"
			}
			add(f)
			return
		}
		staged = append(staged, e)
	}
	var pendingRows []PendingRefund
	if b.Rows != nil {
		err := b.Rows(func(row BillRow) error {
			switch {
			case row.Entry != nil:
				compare(*row.Entry)
			case row.Unreadable != nil:
				add(*row.Unreadable)
			case row.Pending != nil:
				pendingRows = append(pendingRows, *row.Pending)
			}
			return ctx.Err()
		})
		if err != nil {
			return nil, fmt.Errorf("bill of %s %s %s: %w", b.Provider, b.Merchant, b.Day, err)
		}
	}
	// The bill held: its pending refunds are asked about again (one that settled since is
	// compared like a row), then what is missing is ingested.
	for _, pr := range pendingRows {
		settled, ended, err := (*Result)(nil), "", error(nil)
		if b.SettlePending != nil {
			settled, ended, err = b.SettlePending(ctx, pr)
		}
		switch {
		case err != nil && Retryable(err):
			return nil, fmt.Errorf("ask about refund %s: %w", pr.RefundID, err)
		case err == nil && settled != nil:
			compare(*settled)
		case err == nil && ended != "":
			add(Finding{Kind: FindingUnrelayable, OrderID: pr.OrderID, RefundID: pr.RefundID, RefundNo: pr.RefundNo, BillMinor: pr.AmountMinor, Action: "reported",
				Reason: fmt.Sprintf("refund %s was %s on the bill and ended %.20s: the money did not go back; an operator must act", pr.RefundID, pr.State, ended)})
		default:
			add(Finding{Kind: FindingPendingRefund, OrderID: pr.OrderID, PaymentID: PaymentID(b.Environment, b.Provider, b.Merchant, pr.OrderID), RefundID: pr.RefundID,
				RefundNo: pr.RefundNo, BillMinor: pr.AmountMinor, Action: ActionPending,
				Reason: fmt.Sprintf("refund %s was %s on the bill and when asked again: later runs ask again until it settles", pr.RefundID, pr.State)})
		}
	}
	if err := s.ingestStaged(ctx, b, staged, rep, add); err != nil {
		return nil, err
	}
	// What payrelay holds of that day that the bill lacks.
	if err := s.notInBill(ctx, set, rep, add); err != nil {
		return nil, err
	}
	if err := s.withRetry(ctx, func(ctx context.Context) error { return s.cfg.Reports.PutReport(ctx, rep) }); err != nil {
		return rep, fmt.Errorf("store report: %w", err)
	}
	return rep, nil
}

// ingestStaged ingests what the bill shows and the day's set lacked, payments before refunds
// (a refund of a payment missing too attaches to it): each is looked up by id first (a payment
// of another day, paid near midnight, or known so far only from a refund) and compared, then
// ingested through the notification path.
func (s *Service) ingestStaged(ctx context.Context, b Bill, staged []Result, rep *Report, add func(Finding)) error {
	slices.SortStableFunc(staged, func(x, y Result) int {
		return boolInt(x.Type == TypePaymentRefunded) - boolInt(y.Type == TypePaymentRefunded)
	})
	byID := map[string]*Payment{}
	lookup := func(order string) (*Payment, error) {
		for _, m := range b.Merchants {
			if p, ok := byID[PaymentID(b.Environment, b.Provider, m, order)]; ok {
				return p, nil
			}
		}
		for _, m := range b.Merchants {
			id := PaymentID(b.Environment, b.Provider, m, order)
			p, _, err := s.getRetry(ctx, id)
			switch {
			case err == nil:
				byID[id] = p.billFacts()
				return byID[id], nil
			case !errors.Is(err, ErrNotFound):
				return nil, err
			}
		}
		return nil, nil
	}
	var missing []pendingIngest
	inBill := map[string]bool{} // payment ids this bill paid
	for _, e := range staged {
		if e.Type == TypePaymentSucceeded {
			inBill[PaymentID(b.Environment, b.Provider, e.Payment.Merchant, e.Payment.OrderID)] = true
		}
	}
	for _, e := range staged {
		q := e.Payment
		p, err := lookup(q.OrderID)
		if err != nil {
			return fmt.Errorf("look up order %s: %w", q.OrderID, err)
		}
		if e.Type == TypePaymentRefunded && (p == nil || p.Paid() == nil) && b.FindPayment != nil && len(b.Merchants) == 1 &&
			!inBill[PaymentID(b.Environment, b.Provider, q.Merchant, q.OrderID)] {
			// A refund of a payment payrelay never received: ask the provider for the payment,
			// and relay it before the refund.
			found, err := s.findPayment(ctx, b, q.OrderID, add)
			if err != nil {
				return err
			}
			if found {
				id := PaymentID(b.Environment, b.Provider, q.Merchant, q.OrderID)
				inBill[id] = true
				delete(byID, id)
				if p, err = lookup(q.OrderID); err != nil {
					return fmt.Errorf("look up order %s: %w", q.OrderID, err)
				}
			}
		}
		f := Finding{OrderID: q.OrderID, PaymentID: PaymentID(b.Environment, b.Provider, q.Merchant, q.OrderID)}
		if p != nil {
			f.PaymentID, f.StoredMinor = p.ID, p.AmountMinor
		}
		var stored *Notification
		if e.Type == TypePaymentSucceeded {
			f.BillMinor = q.AmountMinor
			if p != nil {
				stored = p.Paid()
			}
		} else {
			f.RefundID, f.BillMinor, f.SettledMinor = e.Refund.ID, e.Refund.AmountMinor, e.Refund.SettlementMinor
			if p != nil {
				stored = p.RefundByID(e.Refund.ID)
			}
		}
		if stored != nil {
			switch reason := differs(p, stored, e); {
			case reason != "":
				f.Kind, f.Action, f.Reason = FindingConflict, "not relayed", reason
				if stored.Refund != nil {
					f.StoredMinor = stored.Refund.AmountMinor
				}
			case stored.Via == ViaReconcile:
				f.Kind, f.Action = missingKind(e.Type), "ingested by an earlier run"
			default:
				rep.Matched++
				continue
			}
			add(f)
			continue
		}
		f.Kind = missingKind(e.Type)
		if len(b.Merchants) > 1 && p == nil {
			f.Kind, f.Action = FindingUnrelayable, "reported"
			f.Reason = fmt.Sprintf("the bill's account is shared by %d apps and the bill does not say which one sold it: query it (补单) with the right app", len(b.Merchants))
			add(f)
			continue
		}
		in := e
		in.Via = ViaReconcile
		if p != nil { // a refund of a payment stored, maybe under another app of the account
			in.Payment.Merchant, in.Payment.AppID, in.Payment.Game = p.Merchant, p.AppID, p.Game
		}
		missing = append(missing, pendingIngest{in, f})
	}
	// What is missing, payments before refunds: ingested now, or, when there are more than
	// ReconcileInline, relayed by a job on the ops queue at the bounded rate (the run would
	// otherwise spend its timeout ingesting, and all at once).
	if len(missing) > ReconcileInline && s.cfg.Jobs != nil && s.cfg.JobQueue != nil {
		items := make([]Result, len(missing))
		for i, m := range missing {
			items[i] = m.in
		}
		j, err := s.startRelayJob(ctx, rep.ID, rep.By, items)
		if j == nil {
			return err
		}
		rep.RelayJob = j.ID
		for _, m := range missing {
			m.f.Action = "queued: relayed by job " + j.ID
			add(m.f)
		}
		return err // a job not enqueued: the run is repeated, and its items are found stored
	}
	for _, m := range missing {
		f, matched, err := s.ingestFinding(ctx, m.in, m.f)
		switch {
		case err != nil:
			return err
		case matched:
			rep.Matched++
		default:
			add(f)
		}
	}
	return nil
}

// ReconcileInline is how many missing payments and refunds a reconciliation ingests itself;
// beyond it, a relay job on the ops queue relays them.
const ReconcileInline = 100

// pendingIngest is a bill's entry to ingest, with its finding.
type pendingIngest struct {
	in Result
	f  Finding
}

// ingestFinding ingests what a reconciliation found missing through the notification path and
// completes its finding: ingested, a conflict, money payrelay cannot relay, or the order's own
// failure (reported; the others go on, invariant 12); matched when it was stored meanwhile (by
// its own notification, or an interrupted step of a relay job). An error is the store or the
// queue unavailable: the run or the step is repeated.
func (s *Service) ingestFinding(ctx context.Context, in Result, f Finding) (Finding, bool, error) {
	if f.Kind == "" {
		f.Kind = missingKind(in.Type)
	}
	if in.Refund != nil && f.RefundID == "" {
		f.RefundID, f.BillMinor = in.Refund.ID, in.Refund.AmountMinor
	} else if f.BillMinor == 0 {
		f.BillMinor = in.Payment.AmountMinor
	}
	res, err := s.Ingest(ctx, in)
	var over *ErrOverRefund
	var fe *FieldError
	switch {
	case errors.Is(err, ErrFactsDiffer), errors.As(err, &over):
		f.Kind, f.Action, f.Reason = FindingConflict, "not relayed", err.Error()
	case errors.As(err, &fe):
		f.Kind, f.Action, f.Reason = FindingUnrelayable, "reported", fe.Error()
	case err != nil && Retryable(err):
		return f, false, fmt.Errorf("ingest order %s: %w", in.Payment.OrderID, err)
	case err != nil:
		f.Action, f.Reason = "failed", fmt.Sprintf("%.300v", err)
	case res.Duplicate:
		return f, true, nil
	default:
		f.Action = "ingested"
	}
	if f.PaymentID == "" {
		f.PaymentID = res.PaymentID
	}
	return f, false, nil
}

// notInBill reports what payrelay holds of the day that the bill lacked: every record of the
// set the bill did not mark. The first FindingsDetailed read their payment for the order and
// refund ids; the rest name the payment id and amount.
func (s *Service) notInBill(ctx context.Context, set *daySet, rep *Report, add func(Finding)) error {
	detailed := 0
	for i := range set.recs {
		rec := &set.recs[i]
		if rec.flags()&recSeen != 0 {
			continue
		}
		f := Finding{Kind: FindingNotInBill, PaymentID: rec.paymentID(), StoredMinor: rec.amount, Action: "reported"}
		if detailed++; detailed <= FindingsDetailed {
			p, _, err := s.getRetry(ctx, f.PaymentID)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("payment %s: %w", f.PaymentID, err)
			}
			if p != nil {
				f.OrderID = p.OrderID
				if rec.sub == 0 {
					if n := p.Paid(); n != nil {
						f.Reason = "payrelay holds this payment (" + n.Via + "); the provider's bill of its day does not list it"
					}
				} else {
					for _, n := range p.Notifications {
						if n.Refund != nil && n.Type == TypePaymentRefunded && refundHash(n.Refund.ID) == rec.sub {
							f.RefundID = n.Refund.ID
							f.Reason = "payrelay holds this refund (" + n.Via + "); the provider's bill of its day does not list it"
						}
					}
				}
			}
		}
		add(f)
	}
	return nil
}

// findPayment asks the provider (Bill.FindPayment) for the payment of a refund the bill shows
// alone, and ingests it when paid, reporting it as a missing payment found so. An error means
// the run must be repeated; a provider that refuses or finds nothing leaves the refund alone.
func (s *Service) findPayment(ctx context.Context, b Bill, orderID string, add func(Finding)) (bool, error) {
	r, err := b.FindPayment(ctx, orderID)
	if err != nil && Retryable(err) {
		return false, fmt.Errorf("query order %s: %w", orderID, err)
	}
	if err != nil || r == nil || r.Type != TypePaymentSucceeded {
		return false, nil
	}
	in := *r
	in.Via = ViaReconcile
	res, err := s.Ingest(ctx, in)
	f := Finding{Kind: FindingMissingPayment, OrderID: orderID, PaymentID: res.PaymentID, BillMinor: in.Payment.AmountMinor, Action: "ingested",
		Reason: "the bill shows a refund of it; the provider, asked, reports it paid"}
	var over *ErrOverRefund
	switch {
	case errors.Is(err, ErrFactsDiffer), errors.As(err, &over):
		f.Kind, f.Action, f.Reason = FindingConflict, "not relayed", err.Error()
	case err != nil && Retryable(err):
		return false, fmt.Errorf("ingest order %s: %w", orderID, err)
	case err != nil:
		f.Action, f.Reason = "failed", fmt.Sprintf("%.300v", err)
	case res.Duplicate:
		return true, nil
	}
	add(f)
	return err == nil, nil
}

// loadDay reads every payment under the bill's day keys (each merchant's paid and refund
// keys), a page (DayPage) per store operation, into the day's compact set: of each payment the
// record of its payment if it was paid that day, and of each of its refunds of that day.
func (s *Service) loadDay(ctx context.Context, b Bill) (*daySet, error) {
	set := &daySet{}
	// Sized once: a slice grown by appending copies itself, holding old and new at once.
	size, counts := 0, map[string]int{}
	for _, m := range b.Merchants {
		for _, kind := range []string{billPaid, billRefund} {
			var n int
			key := BillDayKey(kind, b.Provider, m, b.Day)
			err := s.withRetryFor(ctx, CountTimeout, func(ctx context.Context) error {
				var err error
				n, err = s.cfg.Days.CountOnBillDay(ctx, key)
				return err
			})
			if err != nil {
				return nil, err
			}
			size += n
			counts[key] = n
		}
	}
	if limit := s.cfg.MaxDayPayments; limit > 0 && size > limit {
		return nil, &DayTooLarge{Stored: size, Max: limit}
	}
	set.recs = make([]dayRecord, 0, size+size/64+16) // a few more: payments stored meanwhile
	for _, m := range b.Merchants {
		for _, kind := range []string{billPaid, billRefund} {
			key := BillDayKey(kind, b.Provider, m, b.Day)
			if err := s.readDay(ctx, key, counts[key], func(page []*Payment) {
				for _, p := range page {
					// A bill is of one environment's account; the other's payments are not its.
					if p.Environment == b.Environment {
						set.addPayment(p, kind, b.Day)
					}
				}
			}); err != nil {
				return nil, err
			}
		}
	}
	set.seal()
	return set, nil
}

// DayPartitions is how many ranges of payment ids a day is read in at once (Config.DayPartitions
// overrides it). Payment ids are hex hashes, so ranges by their first digit split a day evenly;
// this is a partitioned query done by id range, which works on the Firestore emulator too (it
// does not implement PartitionQuery) and needs no index beyond the day query's own.
const DayPartitions = 8

// readDay reads the n payments under day key, in id ranges read at once, each a page (DayPage)
// per store operation: one range for a day of a few pages (a range costs a query even when
// empty), up to DayPartitions for a large one. add takes each page, one at a time (the pages
// are handed over through a channel, so the set is never shared and at most a page per range
// is held).
func (s *Service) readDay(ctx context.Context, key string, n int, add func([]*Payment)) error {
	parts := s.cfg.DayPartitions
	if parts <= 0 {
		parts = DayPartitions
	}
	parts = max(min(parts, 16, n/(4*DayPage)), 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make(chan []*Payment, parts)
	errs := make(chan error, parts)
	var wg sync.WaitGroup
	for i := range parts {
		lo, hi := hexBound(i*16/parts), hexBound((i+1)*16/parts)
		wg.Go(func() {
			for after := lo; ; {
				var page []*Payment
				err := s.withRetryFor(ctx, PageTimeout, func(ctx context.Context) error {
					var err error
					page, err = s.cfg.Days.OnBillDay(ctx, key, after, hi, DayPage)
					return err
				})
				if err != nil {
					errs <- err
					cancel()
					return
				}
				if len(page) > 0 {
					select {
					case pages <- page:
					case <-ctx.Done():
						return
					}
				}
				if len(page) < DayPage {
					return
				}
				after = page[len(page)-1].ID
			}
		})
	}
	go func() { wg.Wait(); close(pages) }()
	for page := range pages {
		add(page)
	}
	select {
	case err := <-errs:
		return err
	default:
		return ctx.Err()
	}
}

// hexBound is the id bound before the hex digit d: "" for 0 and 16 (no bound), else the digit.
func hexBound(d int) string {
	if d <= 0 || d >= 16 {
		return ""
	}
	return string("0123456789abcdef"[d])
}

// DayTooLarge refuses a reconciliation whose stored day holds more payments and refunds than
// the function's memory is sized for: reported before the day is read, never run out of
// memory half way.
type DayTooLarge struct{ Stored, Max int }

func (e *DayTooLarge) Error() string {
	return fmt.Sprintf("the day holds %d stored payments and refunds, more than the %d this function's memory is sized for (RECONCILE_MAX_DAY_PAYMENTS): raise reconcile_memory", e.Stored, e.Max)
}

// billFacts is the part of a payment a reconciliation compares and ingests by: its facts and
// routing, and of each notification its type, refund, state and how payrelay learnt of it;
// without metadata, notes or delivery history, which are most of a stored payment.
func (p *Payment) billFacts() *Payment {
	f := &Payment{ID: p.ID, Provider: p.Provider, Environment: p.Environment, Merchant: p.Merchant, OrderID: p.OrderID, TransactionID: p.TransactionID,
		AmountMinor: p.AmountMinor, Currency: p.Currency, PaidAt: p.PaidAt, AppID: p.AppID, Game: p.Game, RefundedMinor: p.RefundedMinor,
		Notifications: make([]Notification, len(p.Notifications))}
	for i, n := range p.Notifications {
		f.Notifications[i] = Notification{Key: n.Key, Type: n.Type, Refund: n.Refund, State: n.State, Via: n.Via}
	}
	return f
}

// SaveReport writes a report again after its findings changed (a pending refund that settled
// since); it counts as a run of that report.
func (s *Service) SaveReport(ctx context.Context, r *Report) error {
	if s.cfg.Reports == nil {
		return ErrNoReconcile
	}
	return s.withRetry(ctx, func(ctx context.Context) error { return s.cfg.Reports.PutReport(ctx, r) })
}

// Report returns a stored report.
func (s *Service) Report(ctx context.Context, id string) (*Report, error) {
	if s.cfg.Reports == nil {
		return nil, ErrNoReconcile
	}
	var r *Report
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		r, err = s.cfg.Reports.GetReport(ctx, id)
		return err
	})
	return r, err
}

// ReportPage returns a stored report with one page of its findings, and its number of pages.
func (s *Service) ReportPage(ctx context.Context, id string, page int) (*Report, int, error) {
	if s.cfg.Reports == nil {
		return nil, 0, ErrNoReconcile
	}
	var r *Report
	var pages int
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		r, pages, err = s.cfg.Reports.GetReportPage(ctx, id, page)
		return err
	})
	return r, pages, err
}

// Reports returns the newest stored reports.
func (s *Service) Reports(ctx context.Context, limit int) ([]*Report, error) {
	if s.cfg.Reports == nil {
		return nil, ErrNoReconcile
	}
	var rs []*Report
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		rs, err = s.cfg.Reports.ListReports(ctx, limit)
		return err
	})
	return rs, err
}

// differs says how a bill's entry contradicts the stored notification it names, or "".
func differs(p *Payment, n *Notification, e Result) string {
	if e.Type == TypePaymentRefunded {
		if n.Refund.AmountMinor != e.Refund.AmountMinor {
			return fmt.Sprintf("the bill refunds %d, payrelay recorded %d for refund %s", e.Refund.AmountMinor, n.Refund.AmountMinor, e.Refund.ID)
		}
		return ""
	}
	q := e.Payment
	switch {
	case p.AmountMinor != q.AmountMinor || p.Currency != q.Currency:
		return fmt.Sprintf("the bill states %d %s, payrelay stored %d %s", q.AmountMinor, q.Currency, p.AmountMinor, p.Currency)
	case p.TransactionID != "" && q.TransactionID != "" && p.TransactionID != q.TransactionID:
		return fmt.Sprintf("the bill's transaction %s is not the stored %s", q.TransactionID, p.TransactionID)
	}
	return ""
}

func missingKind(t Type) FindingKind {
	if t == TypePaymentRefunded {
		return FindingMissingRefund
	}
	return FindingMissingPayment
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
