package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"
)

// Job is a bulk replay: every notification matching Filter replayed, a page per step, each
// step a task of its own, so the job survives any process running it being killed: the step is
// retried from the cursor saved after the previous one, and a notification this job already
// replayed is skipped (its history names the job), so none is replayed twice.
type Job struct {
	ID string `json:"id"`
	// Kind is JobReplay (a bulk replay: Filter, Cursor) or JobRelay (a reconciliation's missing
	// payments and refunds, relayed from its stored items: ReportID, Pages).
	Kind     JobKind  `json:"kind"`
	ReportID string   `json:"report_id,omitempty"`
	Pages    int      `json:"pages,omitempty"`
	Filter   Filter   `json:"filter"`
	By       string   `json:"by"`
	Reason   string   `json:"reason"`
	State    JobState `json:"state"`
	Step     int      `json:"step"`             // the next step to run
	Cursor   string   `json:"cursor,omitempty"` // where the next step's page starts
	// Counts of the steps recorded. A step interrupted before it recorded its progress is not
	// counted; its replays stand in the notifications' histories under the job's id.
	Replayed int `json:"replayed"`
	Skipped  int `json:"skipped"` // already replayed by this job (a step run again after an interruption)
	Refused  int `json:"refused"` // no longer replayable when the job reached them (or gone)
	// Failed counts the notifications whose replay failed for a reason of their own (not an
	// unavailable store or queue, which makes the step run again): each is recorded in
	// Failures (the first MaxJobFailures) and the job went on.
	Failed    int       `json:"failed"`
	Failures  []string  `json:"failures,omitempty"`
	Error     string    `json:"error,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// JobKind is what a job does.
type JobKind string

const (
	// JobReplay replays the notifications a filter selects.
	JobReplay JobKind = "replay"
	// JobRelay relays what a reconciliation found missing: its items stored with it, a page
	// (JobItemsPage) per step. For it the counts read: Replayed ingested, Skipped already stored
	// (by its own notification meanwhile, or by this job before an interruption), Refused a
	// conflict or money payrelay cannot relay, Failed an item's own failure.
	JobRelay JobKind = "relay"
)

// JobItemsPage is how many of a relay job's items one step ingests.
const JobItemsPage = 100

// JobState is where a job is.
type JobState string

const (
	// JobRunning: steps remain; each step's task runs the next.
	JobRunning JobState = "running"
	// JobDone: every page was replayed.
	JobDone JobState = "done"
)

// JobStore keeps jobs. Implementations classify errors like a Store's.
type JobStore interface {
	CreateJob(ctx context.Context, j *Job) error
	GetJob(ctx context.Context, id string) (*Job, Version, error)
	UpdateJob(ctx context.Context, j *Job, v Version) (Version, error)
	// PutJobItems stores page page of a relay job's items; JobItems reads it back.
	PutJobItems(ctx context.Context, jobID string, page int, items []Result) error
	JobItems(ctx context.Context, jobID string, page int) ([]Result, error)
}

// JobQueue schedules a job's steps (on a queue of their own, never a game's).
type JobQueue interface {
	EnqueueJob(ctx context.Context, jobID string, step int) error
	// EnqueueAck schedules the acknowledgement of payment paymentID's purchase to its store,
	// now, as the task named name.
	EnqueueAck(ctx context.Context, name, paymentID string) error
}

// MaxJobFailures bounds the failures a job lists (Failed counts them all).
const MaxJobFailures = 20

// ErrNoJobs: the service was built without a job store and queue (OPS_QUEUE unset).
var ErrNoJobs = errors.New("relay: bulk replay is not configured (OPS_QUEUE)")

// JobPage is how many payments one step reads.
const JobPage = 100

// StartReplayJob records a bulk replay of the notifications matching f (failed ones unless f
// names cancelled or not_relayed) and enqueues its first step.
func (s *Service) StartReplayJob(ctx context.Context, f Filter, op Operator) (*Job, error) {
	if s.cfg.Jobs == nil || s.cfg.JobQueue == nil || s.cfg.Finder == nil {
		return nil, ErrNoJobs
	}
	switch f.State {
	case "":
		f.State = StateFailed
	case StateFailed, StateCancelled, StateNotRelayed:
	default:
		return nil, &FieldError{"state", "a bulk replay takes failed, cancelled or not_relayed notifications"}
	}
	var b [8]byte
	rand.Read(b[:])
	now := s.cfg.Clock.Now()
	j := &Job{ID: "job-" + hex.EncodeToString(b[:]), Kind: JobReplay, Filter: f, By: op.By, Reason: op.Reason, State: JobRunning, CreatedAt: now, UpdatedAt: now}
	if err := s.withRetry(ctx, func(ctx context.Context) error { return s.cfg.Jobs.CreateJob(ctx, j) }); err != nil {
		return nil, fmt.Errorf("create job: %w", err)
	}
	if err := s.withRetry(ctx, func(ctx context.Context) error { return s.cfg.JobQueue.EnqueueJob(ctx, j.ID, 0) }); err != nil {
		return j, fmt.Errorf("enqueue job: %w", err)
	}
	return j, nil
}

// Job returns a job's progress.
func (s *Service) Job(ctx context.Context, id string) (*Job, error) {
	if s.cfg.Jobs == nil {
		return nil, ErrNoJobs
	}
	var j *Job
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		j, _, err = s.cfg.Jobs.GetJob(ctx, id)
		return err
	})
	return j, err
}

// RunJobStep runs step `step` of a job: one page of replays at the bounded rate, then the
// progress recorded and the next step enqueued. A step that is not the job's next (a duplicate
// task) does nothing. An error means the step must run again; it resumes where the last
// recorded one ended.
func (s *Service) RunJobStep(ctx context.Context, jobID string, step int) (*Job, error) {
	if s.cfg.Jobs == nil || s.cfg.JobQueue == nil || s.cfg.Finder == nil {
		return nil, ErrNoJobs
	}
	var j *Job
	var v Version
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		j, v, err = s.cfg.Jobs.GetJob(ctx, jobID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load job: %w", err)
	}
	if j.State == JobDone || j.Step != step {
		return j, nil
	}
	if j.Kind == JobRelay {
		return s.relayStep(ctx, j, v)
	}
	items, next, err := s.List(ctx, j.Filter, j.Cursor, JobPage)
	if err != nil {
		return j, err
	}
	limiter := rate.NewLimiter(rate.Limit(s.cfg.ReplayRate), 1)
	op := Operator{By: j.By, Reason: j.Reason, Job: j.ID}
	for _, it := range items {
		if err := limiter.Wait(ctx); err != nil {
			return j, err
		}
		res, err := s.Replay(ctx, it.Payment.ID, it.Notification.Key, false, op)
		var stateErr *StateError
		switch {
		case errors.As(err, &stateErr), errors.Is(err, ErrNotFound):
			j.Refused++ // replayed, changed or deleted since the page was read
		case err != nil && res.Payment == nil && Retryable(err):
			// The store is unavailable: no item can progress; the step runs again.
			return j, fmt.Errorf("replay %s: %w", NotificationID(it.Payment.ID, it.Notification.Key), err)
		case err != nil && res.Payment == nil:
			// This item's own failure (a write conflict that persisted, a document that no
			// longer decodes): recorded, and the job goes on (invariant 12).
			j.Failed++
			if len(j.Failures) < MaxJobFailures {
				j.Failures = append(j.Failures, fmt.Sprintf("%s: %.200v", NotificationID(it.Payment.ID, it.Notification.Key), err))
			}
		case res.Skipped:
			j.Skipped++
		default:
			j.Replayed++ // recorded; an enqueue that failed is the sweeper's
		}
	}
	j.Cursor, j.Step, j.UpdatedAt = next, step+1, s.cfg.Clock.Now()
	if next == "" {
		j.State = JobDone
	}
	return s.recordStep(ctx, j, v)
}

// startRelayJob stores a reconciliation's items to relay (payments before refunds, as staged)
// in pages and enqueues the job's first step: the ops queue relays them at ReplayRate, a page
// per step, resumable as a bulk replay is.
func (s *Service) startRelayJob(ctx context.Context, reportID, by string, items []Result) (*Job, error) {
	var b [8]byte
	rand.Read(b[:])
	now := s.cfg.Clock.Now()
	j := &Job{ID: "job-" + hex.EncodeToString(b[:]), Kind: JobRelay, ReportID: reportID, By: by, Reason: "reconciliation " + reportID,
		State: JobRunning, Pages: (len(items) + JobItemsPage - 1) / JobItemsPage, CreatedAt: now, UpdatedAt: now}
	for page := range j.Pages {
		chunk := items[page*JobItemsPage : min((page+1)*JobItemsPage, len(items))]
		if err := s.withRetry(ctx, func(ctx context.Context) error { return s.cfg.Jobs.PutJobItems(ctx, j.ID, page, chunk) }); err != nil {
			return nil, fmt.Errorf("store relay job items: %w", err)
		}
	}
	if err := s.withRetry(ctx, func(ctx context.Context) error { return s.cfg.Jobs.CreateJob(ctx, j) }); err != nil {
		return nil, fmt.Errorf("create relay job: %w", err)
	}
	if err := s.withRetry(ctx, func(ctx context.Context) error { return s.cfg.JobQueue.EnqueueJob(ctx, j.ID, 0) }); err != nil {
		return j, fmt.Errorf("enqueue relay job: %w", err)
	}
	return j, nil
}

// relayStep ingests page j.Step of a relay job's items at the bounded rate, each through the
// notification path (ingest is idempotent: an item ingested before an interruption is found
// stored, never relayed twice), then records the progress and enqueues the next step.
func (s *Service) relayStep(ctx context.Context, j *Job, v Version) (*Job, error) {
	var items []Result
	err := s.withRetry(ctx, func(ctx context.Context) error {
		var err error
		items, err = s.cfg.Jobs.JobItems(ctx, j.ID, j.Step)
		return err
	})
	if err != nil {
		return j, fmt.Errorf("load job items: %w", err)
	}
	limiter := rate.NewLimiter(rate.Limit(s.cfg.ReplayRate), 1)
	for _, in := range items {
		if err := limiter.Wait(ctx); err != nil {
			return j, err
		}
		f, matched, err := s.ingestFinding(ctx, in, Finding{OrderID: in.Payment.OrderID})
		switch {
		case err != nil:
			return j, err // the store or the queue is unavailable: the step runs again
		case matched:
			j.Skipped++
		case f.Action == "ingested":
			j.Replayed++
		case f.Action == "failed":
			j.Failed++
			if len(j.Failures) < MaxJobFailures {
				j.Failures = append(j.Failures, fmt.Sprintf("%s: %.200s", in.Payment.OrderID, f.Reason))
			}
		default:
			j.Refused++
			if len(j.Failures) < MaxJobFailures {
				j.Failures = append(j.Failures, fmt.Sprintf("%s: %s: %.200s", in.Payment.OrderID, f.Kind, f.Reason))
			}
		}
	}
	j.Step, j.UpdatedAt = j.Step+1, s.cfg.Clock.Now()
	if j.Step >= j.Pages {
		j.State = JobDone
	}
	return s.recordStep(ctx, j, v)
}

// recordStep records a job's progress after a step, conditioned on the version the step read
// (a duplicate run of the step that recorded first wins; this one does nothing more), and
// enqueues the next step while the job runs.
func (s *Service) recordStep(ctx context.Context, j *Job, v Version) (*Job, error) {
	err := s.withRetry(ctx, func(ctx context.Context) error {
		_, err := s.cfg.Jobs.UpdateJob(ctx, j, v)
		return err
	})
	if errors.Is(err, ErrVersionConflict) {
		return j, nil // another run of this step recorded it first
	}
	if err != nil {
		return j, fmt.Errorf("record job progress: %w", err)
	}
	if j.State == JobRunning {
		if err := s.withRetry(ctx, func(ctx context.Context) error { return s.cfg.JobQueue.EnqueueJob(ctx, j.ID, j.Step) }); err != nil {
			return j, fmt.Errorf("enqueue job step %d: %w", j.Step, err)
		}
	}
	return j, nil
}
