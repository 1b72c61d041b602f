package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"cloud.google.com/go/firestore"

	"github.com/payrelay/payrelay/functions/relay"
)

var _ relay.JobStore = (*Firestore)(nil)

// jobDoc is a bulk replay as stored, in the payments collection's sibling "<collection>-jobs".
type jobDoc struct {
	Kind      string    `firestore:"kind"`
	ReportID  string    `firestore:"report_id"`
	Pages     int       `firestore:"pages"`
	State     string    `firestore:"state"`
	FState    string    `firestore:"filter_state"`
	FType     string    `firestore:"filter_type"`
	FGame     string    `firestore:"filter_game"`
	FProvider string    `firestore:"filter_provider"`
	FEnv      string    `firestore:"filter_environment"`
	FFrom     time.Time `firestore:"filter_from"`
	FTo       time.Time `firestore:"filter_to"`
	By        string    `firestore:"by"`
	Reason    string    `firestore:"reason"`
	Step      int       `firestore:"step"`
	Cursor    string    `firestore:"cursor"`
	Replayed  int       `firestore:"replayed"`
	Skipped   int       `firestore:"skipped"`
	Refused   int       `firestore:"refused"`
	Failed    int       `firestore:"failed"`
	Failures  []string  `firestore:"failures"`
	Error     string    `firestore:"error"`
	CreatedAt time.Time `firestore:"created_at"`
	UpdatedAt time.Time `firestore:"updated_at"`
}

func (s *Firestore) jobs() *firestore.CollectionRef { return s.client.Collection(s.coll.ID + "-jobs") }

func toJobDoc(j *relay.Job) *jobDoc {
	return &jobDoc{Kind: string(j.Kind), ReportID: j.ReportID, Pages: j.Pages, State: string(j.State), FState: string(j.Filter.State), FType: string(j.Filter.Type), FGame: j.Filter.Game,
		FProvider: j.Filter.Provider, FEnv: string(j.Filter.Environment), FFrom: j.Filter.From, FTo: j.Filter.To, By: utf8(j.By), Reason: utf8(j.Reason), Step: j.Step,
		Cursor: j.Cursor, Replayed: j.Replayed, Skipped: j.Skipped, Refused: j.Refused, Failed: j.Failed, Failures: j.Failures,
		Error: utf8(j.Error), CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt}
}

// CreateJob implements relay.JobStore.
func (s *Firestore) CreateJob(ctx context.Context, j *relay.Job) error {
	s.counter.write()
	if _, err := s.jobs().Doc(j.ID).Create(ctx, toJobDoc(j)); err != nil {
		return classify("firestore.Create job", err)
	}
	return nil
}

// GetJob implements relay.JobStore.
func (s *Firestore) GetJob(ctx context.Context, id string) (*relay.Job, relay.Version, error) {
	s.counter.read()
	snap, err := s.jobs().Doc(id).Get(ctx)
	if err != nil {
		return nil, 0, classify("firestore.Get job", err)
	}
	var d jobDoc
	if err := snap.DataTo(&d); err != nil {
		return nil, 0, fmt.Errorf("firestore.DataTo job %s: %w", id, err)
	}
	j := &relay.Job{ID: id, Kind: relay.JobKind(d.Kind), ReportID: d.ReportID, Pages: d.Pages, State: relay.JobState(d.State), By: d.By, Reason: d.Reason, Step: d.Step, Cursor: d.Cursor,
		Replayed: d.Replayed, Skipped: d.Skipped, Refused: d.Refused, Failed: d.Failed, Failures: d.Failures, Error: d.Error,
		CreatedAt: d.CreatedAt.UTC(), UpdatedAt: d.UpdatedAt.UTC(),
		Filter: relay.Filter{State: relay.State(d.FState), Type: relay.Type(d.FType), Game: d.FGame, Provider: d.FProvider, Environment: relay.Environment(d.FEnv)}}
	if !d.FFrom.IsZero() {
		j.Filter.From = d.FFrom.UTC()
	}
	if !d.FTo.IsZero() {
		j.Filter.To = d.FTo.UTC()
	}
	return j, relay.Version(snap.UpdateTime.UnixNano()), nil
}

// UpdateJob implements relay.JobStore: the whole job, if it is still at version v.
func (s *Firestore) UpdateJob(ctx context.Context, j *relay.Job, v relay.Version) (relay.Version, error) {
	d := toJobDoc(j)
	s.counter.write()
	wr, err := s.jobs().Doc(j.ID).Update(ctx, []firestore.Update{
		{Path: "state", Value: d.State}, {Path: "step", Value: d.Step}, {Path: "cursor", Value: d.Cursor},
		{Path: "replayed", Value: d.Replayed}, {Path: "skipped", Value: d.Skipped}, {Path: "refused", Value: d.Refused},
		{Path: "failed", Value: d.Failed}, {Path: "failures", Value: d.Failures},
		{Path: "error", Value: d.Error}, {Path: "updated_at", Value: d.UpdatedAt},
	}, firestore.LastUpdateTime(time.Unix(0, int64(v))))
	if err != nil {
		return 0, classify("firestore.Update job", err)
	}
	return relay.Version(wr.UpdateTime.UnixNano()), nil
}

// itemsDoc is one page of a relay job's items, under the job ("<collection>-jobs/{id}/items/
// p00000"), each item the JSON of the relay.Result a reconciliation staged.
type itemsDoc struct {
	Items []string `firestore:"items"`
}

func itemsRef(jobs *firestore.CollectionRef, jobID string, page int) *firestore.DocumentRef {
	return jobs.Doc(jobID).Collection("items").Doc(fmt.Sprintf("p%05d", page))
}

// PutJobItems implements relay.JobStore.
func (s *Firestore) PutJobItems(ctx context.Context, jobID string, page int, items []relay.Result) error {
	d := itemsDoc{Items: make([]string, len(items))}
	for i, it := range items {
		b, err := json.Marshal(it)
		if err != nil {
			return fmt.Errorf("encode job item: %w", err)
		}
		d.Items[i] = string(b)
	}
	s.counter.write()
	if _, err := itemsRef(s.jobs(), jobID, page).Set(ctx, d); err != nil {
		return classify("firestore.Set job items", err)
	}
	return nil
}

// JobItems implements relay.JobStore.
func (s *Firestore) JobItems(ctx context.Context, jobID string, page int) ([]relay.Result, error) {
	s.counter.read()
	snap, err := itemsRef(s.jobs(), jobID, page).Get(ctx)
	if err != nil {
		return nil, classify("firestore.Get job items", err)
	}
	var d itemsDoc
	if err := snap.DataTo(&d); err != nil {
		return nil, fmt.Errorf("firestore.DataTo job %s items %d: %w", jobID, page, err)
	}
	out := make([]relay.Result, len(d.Items))
	for i, it := range d.Items {
		if err := json.Unmarshal([]byte(it), &out[i]); err != nil {
			return nil, fmt.Errorf("decode job %s item %d/%d: %w", jobID, page, i, err)
		}
	}
	return out, nil
}
