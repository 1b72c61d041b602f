package tasksemu

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"google.golang.org/protobuf/encoding/protojson"
)

// The journal makes the emulator durable when given a data directory: every change is
// appended as one JSON line and written through to the OS before the call returns, so a killed
// emulator loses nothing; at start the journal is replayed and compacted into a new one.
// Lines are not fsynced one by one (a machine crash may lose the last ones); Close syncs.

const journalFile = "cloudtasks.journal"

type op string

const (
	opQueue       op = "queue"
	opDeleteQueue op = "delete_queue"
	opTask        op = "task"
	opDeleteTask  op = "delete_task"
)

type record struct {
	Op    op
	Queue *cloudtaskspb.Queue
	Task  *cloudtaskspb.Task
	Name  string
	Until time.Time
}

type wireRecord struct {
	Op    op              `json:"op"`
	Queue json.RawMessage `json:"queue,omitempty"`
	Task  json.RawMessage `json:"task,omitempty"`
	Name  string          `json:"name,omitempty"`
	Until time.Time       `json:"until,omitzero"`
}

func queueRecord(q *queue) record { return record{Op: opQueue, Queue: q.pb} }

func (r record) marshal() ([]byte, error) {
	w := wireRecord{Op: r.Op, Name: r.Name, Until: r.Until}
	var err error
	if r.Queue != nil {
		if w.Queue, err = protojson.Marshal(r.Queue); err != nil {
			return nil, err
		}
	}
	if r.Task != nil {
		if w.Task, err = protojson.Marshal(r.Task); err != nil {
			return nil, err
		}
	}
	return json.Marshal(w)
}

func unmarshalRecord(line []byte) (record, error) {
	var w wireRecord
	if err := json.Unmarshal(line, &w); err != nil {
		return record{}, err
	}
	r := record{Op: w.Op, Name: w.Name, Until: w.Until}
	if len(w.Queue) > 0 {
		r.Queue = &cloudtaskspb.Queue{}
		if err := protojson.Unmarshal(w.Queue, r.Queue); err != nil {
			return record{}, err
		}
	}
	if len(w.Task) > 0 {
		r.Task = &cloudtaskspb.Task{}
		if err := protojson.Unmarshal(w.Task, r.Task); err != nil {
			return record{}, err
		}
	}
	return r, nil
}

type journal struct {
	dir string
	f   *os.File
	w   *bufio.Writer
}

// openJournal replays dir's journal into s, then rewrites it compacted and keeps it open.
func openJournal(dir string, s *Server) (*journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tasksemu: data dir: %w", err)
	}
	path := filepath.Join(dir, journalFile)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tasksemu: read journal: %w", err)
	}
	lines := bytes.Split(data, []byte("\n"))
	for i, line := range lines {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		r, err := unmarshalRecord(line)
		if err != nil {
			if i == len(lines)-1 {
				// A line cut short by a kill mid-write: the change it held was never
				// acknowledged, so dropping it loses nothing a client was told of.
				s.log.Warn("tasks emulator: ignoring a torn last journal line")
				continue
			}
			return nil, fmt.Errorf("tasksemu: journal %s line %d: %w", path, i+1, err)
		}
		s.apply(r)
	}
	j := &journal{dir: dir}
	if err := j.rewrite(s); err != nil {
		return nil, err
	}
	return j, nil
}

// apply replays one record into the in-memory state.
func (s *Server) apply(r record) {
	switch r.Op {
	case opQueue:
		if q, ok := s.queues[r.Queue.Name]; ok {
			applyQueueDefaults(r.Queue)
			q.pb = r.Queue
			q.limiter = newLimiter(r.Queue)
		} else {
			s.queues[r.Queue.Name] = newQueue(r.Queue)
		}
	case opDeleteQueue:
		delete(s.queues, r.Name)
	case opTask:
		qn, _, err := splitTaskName(r.Task.Name)
		q, ok := s.queues[qn]
		if err != nil || !ok {
			return
		}
		if old, ok := q.tasks[r.Task.Name]; ok {
			old.deleted = true
		}
		t := &task{pb: r.Task}
		q.tasks[r.Task.Name] = t
		q.schedule(t)
	case opDeleteTask:
		if qn, _, err := splitTaskName(r.Name); err == nil {
			if q, ok := s.queues[qn]; ok {
				if t, ok := q.tasks[r.Name]; ok {
					t.deleted = true
					delete(q.tasks, r.Name)
				}
			}
		}
		s.tombstones[r.Name] = r.Until
	}
}

// rewrite writes the current state as a fresh journal and swaps it in atomically.
func (j *journal) rewrite(s *Server) error {
	tmp := filepath.Join(j.dir, journalFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("tasksemu: journal: %w", err)
	}
	w := bufio.NewWriter(f)
	write := func(r record) error {
		b, err := r.marshal()
		if err != nil {
			return err
		}
		w.Write(b)
		return w.WriteByte('\n')
	}
	now := s.opts.Now()
	for _, q := range s.queues {
		if err := write(record{Op: opQueue, Queue: q.pb}); err != nil {
			f.Close()
			return err
		}
		for _, t := range q.tasks {
			if err := write(record{Op: opTask, Task: t.pb}); err != nil {
				f.Close()
				return err
			}
		}
	}
	for name, until := range s.tombstones {
		if now.Before(until) {
			if err := write(record{Op: opDeleteTask, Name: name, Until: until}); err != nil {
				f.Close()
				return err
			}
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := os.Rename(tmp, filepath.Join(j.dir, journalFile)); err != nil {
		f.Close()
		return fmt.Errorf("tasksemu: journal: %w", err)
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.w = f, w
	return nil
}

func (j *journal) append(r record) error {
	b, err := r.marshal()
	if err != nil {
		return err
	}
	j.w.Write(b)
	j.w.WriteByte('\n')
	return j.w.Flush()
}

// close compacts the journal one last time and syncs it.
func (j *journal) close(s *Server) error {
	err := j.rewrite(s)
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// record appends r to the journal, if there is one. Called with s.mu held.
func (s *Server) record(r record) {
	if s.journal == nil {
		return
	}
	if err := s.journal.append(r); err != nil {
		s.log.Error("tasks emulator: journal write failed; state may not survive a restart", "error", err)
	}
}
