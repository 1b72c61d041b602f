// Package relaytest provides in-memory stand-ins for the relay core's dependencies, for unit
// tests of the core and of the handlers. Tests of the real adapters run against the emulators.
package relaytest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

var (
	_ relay.Store    = (*Store)(nil)
	_ relay.Queue    = (*Queue)(nil)
	_ relay.Notifier = NotifierFunc(nil)
	_ relay.Clock    = (*Clock)(nil)
)

// Store keeps payments in memory, with versions, and can be told to fail.
type Store struct {
	mu       sync.Mutex
	payments map[string]*relay.Payment
	versions map[string]relay.Version
	next     relay.Version
	// Fail, if set, is called before each operation ("create", "get", "update"); an error it
	// returns is returned by that operation.
	Fail func(op string) error
	// BeforeUpdate, if set, runs (unlocked) before each update: a test can change the payment
	// under a write there.
	BeforeUpdate func(p *relay.Payment)
	// Creates, Gets and Updates count the calls that reached the store; DayQueries the pages
	// of bill-day queries.
	Creates, Gets, Updates, DayQueries int
}

// NewStore returns an empty store.
func NewStore() *Store {
	return &Store{payments: map[string]*relay.Payment{}, versions: map[string]relay.Version{}}
}

func clone(p *relay.Payment) *relay.Payment { return p.Clone() }

func (s *Store) fail(op string) error {
	if s.Fail == nil {
		return nil
	}
	return s.Fail(op)
}

// Create implements relay.Store.
func (s *Store) Create(_ context.Context, p *relay.Payment) (*relay.Payment, relay.Version, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("create"); err != nil {
		return nil, 0, false, err
	}
	s.Creates++
	if old, ok := s.payments[p.ID]; ok {
		return clone(old), s.versions[p.ID], false, nil
	}
	s.next++
	s.payments[p.ID] = clone(p)
	s.versions[p.ID] = s.next
	return clone(p), s.next, true, nil
}

// Get implements relay.Store.
func (s *Store) Get(_ context.Context, id string) (*relay.Payment, relay.Version, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("get"); err != nil {
		return nil, 0, err
	}
	s.Gets++
	p, ok := s.payments[id]
	if !ok {
		return nil, 0, relay.ErrNotFound
	}
	return clone(p), s.versions[id], nil
}

// Update implements relay.Store.
func (s *Store) Update(_ context.Context, p *relay.Payment, v relay.Version) (relay.Version, error) {
	if s.BeforeUpdate != nil {
		s.BeforeUpdate(p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("update"); err != nil {
		return 0, err
	}
	s.Updates++
	cur, ok := s.versions[p.ID]
	if !ok {
		return 0, relay.ErrNotFound
	}
	if cur != v {
		return 0, relay.ErrVersionConflict
	}
	s.next++
	s.payments[p.ID] = clone(p)
	s.versions[p.ID] = s.next
	return s.next, nil
}

// Payment returns a copy of the stored payment, or nil.
func (s *Store) Payment(id string) *relay.Payment {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.payments[id]; ok {
		return clone(p)
	}
	return nil
}

// Len is the number of stored payments.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.payments)
}

// Queue records enqueued tasks, deduplicating by name, and can be told to fail.
type Queue struct {
	mu    sync.Mutex
	names map[string]bool
	// Tasks lists the tasks accepted, in order.
	Tasks []relay.Task
	// Fail, if set, is called before each Enqueue; an error it returns is returned.
	Fail func(t relay.Task) error
	// JobSteps lists the bulk-replay steps enqueued.
	JobSteps []JobStep
	// Acks lists the acknowledgement tasks enqueued, by name (a name enqueued again is
	// refused with relay.ErrTaskExists, as Cloud Tasks does), each naming its payment.
	Acks map[string]string
}

// NewQueue returns an empty queue.
func NewQueue() *Queue { return &Queue{names: map[string]bool{}} }

// Enqueue implements relay.Queue.
func (q *Queue) Enqueue(_ context.Context, t relay.Task) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.Fail != nil {
		if err := q.Fail(t); err != nil {
			return err
		}
	}
	if q.names[t.Name()] {
		return relay.ErrTaskExists
	}
	q.names[t.Name()] = true
	q.Tasks = append(q.Tasks, t)
	return nil
}

// Snapshot returns the tasks accepted so far.
func (q *Queue) Snapshot() []relay.Task {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.Tasks)
}

// NotifierFunc adapts a function to relay.Notifier.
type NotifierFunc func(ctx context.Context, p *relay.Payment, n *relay.Notification, attempt int) relay.NotifyResult

// Notify implements relay.Notifier.
func (f NotifierFunc) Notify(ctx context.Context, p *relay.Payment, n *relay.Notification, attempt int) relay.NotifyResult {
	return f(ctx, p, n, attempt)
}

// Clock is a clock that tests move by hand.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock stopped at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now implements relay.Clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// Mutate changes a stored payment as another writer would, bumping its version.
func (s *Store) Mutate(id string, f func(p *relay.Payment)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.payments[id]
	if !ok {
		return
	}
	c := clone(p)
	f(c)
	s.next++
	s.payments[id] = c
	s.versions[id] = s.next
}

var _ relay.Finder = (*Store)(nil)

// Overdue implements relay.Finder over the payments in memory.
func (s *Store) Overdue(_ context.Context, before time.Time, limit int) ([]*relay.Payment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("overdue"); err != nil {
		return nil, err
	}
	var out []*relay.Payment
	for _, p := range s.payments {
		if due := p.DueAt(); !due.IsZero() && !due.After(before) {
			out = append(out, clone(p))
		}
	}
	slices.SortFunc(out, func(a, b *relay.Payment) int { return a.DueAt().Compare(b.DueAt()) })
	return out[:min(len(out), limit)], nil
}

// OverdueOf implements relay.Finder over one game's payments in memory, oldest due first (then
// by id); the cursor is the last payment's id.
func (s *Store) OverdueOf(_ context.Context, game string, before time.Time, cursor string, limit int) ([]*relay.Payment, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("overdue " + game); err != nil {
		return nil, "", err
	}
	var all []*relay.Payment
	for _, p := range s.payments {
		if due := p.DueAt(); p.Game == game && !due.IsZero() && !due.After(before) {
			all = append(all, clone(p))
		}
	}
	slices.SortFunc(all, func(a, b *relay.Payment) int {
		if c := a.DueAt().Compare(b.DueAt()); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	if cursor != "" {
		due, id, _ := strings.Cut(cursor, "|")
		t, _ := time.Parse(time.RFC3339Nano, due)
		all = slices.DeleteFunc(all, func(p *relay.Payment) bool {
			c := p.DueAt().Compare(t)
			return c < 0 || c == 0 && p.ID <= id
		})
	}
	if len(all) <= limit {
		return all, "", nil
	}
	last := all[limit-1]
	return all[:limit], last.DueAt().Format(time.RFC3339Nano) + "|" + last.ID, nil
}

// List implements relay.Finder over the payments in memory, newest received first; the
// cursor is the last payment's id.
func (s *Store) List(_ context.Context, f relay.Filter, cursor string, limit int) ([]*relay.Payment, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("list"); err != nil {
		return nil, "", err
	}
	var all []*relay.Payment
	for _, p := range s.payments {
		if !slices.Contains(p.Tags(), f.TagFor()) {
			continue
		}
		for i := range p.Notifications {
			if f.Matches(p, &p.Notifications[i]) {
				all = append(all, clone(p))
				break
			}
		}
	}
	all, next := newestFirst(all, cursor, limit)
	return all, next, nil
}

// Count implements relay.Finder over the payments in memory.
func (s *Store) Count(_ context.Context, f relay.Filter) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("count"); err != nil {
		return 0, err
	}
	n := 0
	for _, p := range s.payments {
		if !slices.Contains(p.Tags(), f.TagFor()) {
			continue
		}
		for i := range p.Notifications {
			if f.Matches(p, &p.Notifications[i]) {
				n++
				break
			}
		}
	}
	return n, nil
}

// newestFirst sorts payments newest received first (then by id) and returns the page after
// cursor (the last payment id of the previous page) and the next page's cursor, as the store's
// lists page.
func newestFirst(all []*relay.Payment, cursor string, limit int) ([]*relay.Payment, string) {
	slices.SortFunc(all, func(a, b *relay.Payment) int {
		if c := b.ReceivedAt.Compare(a.ReceivedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	if cursor != "" {
		i := slices.IndexFunc(all, func(p *relay.Payment) bool { return p.ID == cursor })
		all = all[i+1:]
	}
	if len(all) <= limit {
		return all, ""
	}
	return all[:limit], all[limit-1].ID
}

// Jobs keeps bulk replay jobs in memory, with versions.
type Jobs struct {
	mu    sync.Mutex
	jobs  map[string]relay.Job
	vers  map[string]relay.Version
	next  relay.Version
	items map[string][]relay.Result // by job id and page
}

var _ relay.JobStore = (*Jobs)(nil)

// NewJobs returns an empty job store.
func NewJobs() *Jobs {
	return &Jobs{jobs: map[string]relay.Job{}, vers: map[string]relay.Version{}, items: map[string][]relay.Result{}}
}

// PutJobItems implements relay.JobStore.
func (s *Jobs) PutJobItems(_ context.Context, jobID string, page int, items []relay.Result) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items[fmt.Sprintf("%s/%d", jobID, page)] = slices.Clone(items)
	return nil
}

// JobItems implements relay.JobStore.
func (s *Jobs) JobItems(_ context.Context, jobID string, page int) ([]relay.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	items, ok := s.items[fmt.Sprintf("%s/%d", jobID, page)]
	if !ok {
		return nil, relay.ErrNotFound
	}
	return slices.Clone(items), nil
}

// CreateJob implements relay.JobStore.
func (s *Jobs) CreateJob(_ context.Context, j *relay.Job) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	s.jobs[j.ID], s.vers[j.ID] = *j, s.next
	return nil
}

// GetJob implements relay.JobStore.
func (s *Jobs) GetJob(_ context.Context, id string) (*relay.Job, relay.Version, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		return nil, 0, relay.ErrNotFound
	}
	return &j, s.vers[id], nil
}

// UpdateJob implements relay.JobStore.
func (s *Jobs) UpdateJob(_ context.Context, j *relay.Job, v relay.Version) (relay.Version, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vers[j.ID] != v {
		return 0, relay.ErrVersionConflict
	}
	s.next++
	s.jobs[j.ID], s.vers[j.ID] = *j, s.next
	return s.next, nil
}

// JobStep is one bulk-replay step enqueued.
type JobStep struct {
	JobID string
	Step  int
}

// EnqueueJob implements relay.JobQueue on the Queue.
func (q *Queue) EnqueueJob(_ context.Context, jobID string, step int) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.JobSteps = append(q.JobSteps, JobStep{jobID, step})
	return nil
}

// EnqueueAck implements relay.JobQueue on the Queue.
func (q *Queue) EnqueueAck(_ context.Context, name, paymentID string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, dup := q.Acks[name]; dup {
		return relay.ErrTaskExists
	}
	if q.Acks == nil {
		q.Acks = map[string]string{}
	}
	q.Acks[name] = paymentID
	return nil
}

// AckWaiting implements relay.Finder over the payments in memory, newest received first.
func (s *Store) AckWaiting(ctx context.Context, cursor string, limit int) ([]*relay.Payment, string, error) {
	s.mu.Lock()
	if err := s.fail("ack waiting"); err != nil {
		s.mu.Unlock()
		return nil, "", err
	}
	var all []*relay.Payment
	for _, p := range s.payments {
		if slices.Contains(p.Tags(), relay.AckWaitingTag) {
			all = append(all, clone(p))
		}
	}
	s.mu.Unlock()
	all, next := newestFirst(all, cursor, limit)
	return all, next, nil
}

var _ relay.DayFinder = (*Store)(nil)

// CountOnBillDay implements relay.DayFinder.
func (s *Store) CountOnBillDay(_ context.Context, key string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, p := range s.payments {
		if slices.Contains(p.BillDays(), key) {
			n++
		}
	}
	return n, nil
}

// OnBillDay implements relay.DayFinder over the payments in memory, in id order. DayQueries
// counts its calls (the pages read).
func (s *Store) OnBillDay(_ context.Context, key, after, before string, limit int) ([]*relay.Payment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("day"); err != nil {
		return nil, err
	}
	s.DayQueries++
	var out []*relay.Payment
	for _, p := range s.payments {
		if p.ID > after && (before == "" || p.ID < before) && slices.Contains(p.BillDays(), key) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(x, y *relay.Payment) int { return strings.Compare(x.ID, y.ID) })
	out = out[:min(len(out), limit)]
	for i, p := range out {
		out[i] = clone(p)
	}
	return out, nil
}

// Reports keeps reconciliation reports in memory.
type Reports struct {
	mu      sync.Mutex
	reports map[string]relay.Report
}

var _ relay.ReportStore = (*Reports)(nil)

// NewReports returns an empty report store.
func NewReports() *Reports { return &Reports{reports: map[string]relay.Report{}} }

// PutReport implements relay.ReportStore, counting the runs under its lock.
func (s *Reports) PutReport(_ context.Context, r *relay.Report) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Runs = s.reports[r.ID].Runs + 1
	c := *r
	c.Findings = slices.Clone(r.Findings)
	s.reports[r.ID] = c
	return nil
}

// GetReport implements relay.ReportStore.
func (s *Reports) GetReport(_ context.Context, id string) (*relay.Report, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reports[id]
	if !ok {
		return nil, relay.ErrNotFound
	}
	return &r, nil
}

// GetReportPage implements relay.ReportStore.
func (s *Reports) GetReportPage(_ context.Context, id string, page int) (*relay.Report, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reports[id]
	if !ok {
		return nil, 0, relay.ErrNotFound
	}
	pages := (len(r.Findings) + relay.FindingsPage - 1) / relay.FindingsPage
	lo := min(page*relay.FindingsPage, len(r.Findings))
	r.Findings = slices.Clone(r.Findings[lo:min(lo+relay.FindingsPage, len(r.Findings))])
	return &r, pages, nil
}

// ListReports implements relay.ReportStore: newest day first.
func (s *Reports) ListReports(_ context.Context, limit int) ([]*relay.Report, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*relay.Report
	for _, r := range s.reports {
		out = append(out, &r)
	}
	slices.SortFunc(out, func(a, b *relay.Report) int {
		if c := strings.Compare(b.Day, a.Day); c != 0 {
			return c
		}
		return b.RanAt.Compare(a.RanAt)
	})
	return out[:min(len(out), limit)], nil
}

// Cursors keeps recovery sweeps' cursors in memory.
type Cursors struct {
	mu sync.Mutex
	m  map[string]time.Time
}

var _ relay.CursorStore = (*Cursors)(nil)

// NewCursors returns an empty cursor store.
func NewCursors() *Cursors { return &Cursors{m: map[string]time.Time{}} }

// GetCursor implements relay.CursorStore.
func (c *Cursors) GetCursor(_ context.Context, id string) (time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[id], nil
}

// PutCursor implements relay.CursorStore.
func (c *Cursors) PutCursor(_ context.Context, id string, t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[id] = t
	return nil
}
