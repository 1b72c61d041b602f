package tasksemu

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// heapEntry is one scheduling of a task; it is stale once the task was rescheduled, deleted or
// started, which the sequence number tells.
type heapEntry struct {
	at  time.Time
	seq uint64
	t   *task
}

type taskHeap []heapEntry

func (h taskHeap) Len() int           { return len(h) }
func (h taskHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h taskHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *taskHeap) Push(x any)        { *h = append(*h, x.(heapEntry)) }
func (h *taskHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// schedule (re)queues t at its schedule time.
func (q *queue) schedule(t *task) {
	t.sequence++
	heap.Push(&q.due, heapEntry{at: t.pb.ScheduleTime.AsTime(), seq: t.sequence, t: t})
}

func (e heapEntry) stale() bool { return e.seq != e.t.sequence || e.t.deleted || e.t.running }

// loop dispatches due tasks until Close.
func (s *Server) loop() {
	defer close(s.loopDone)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	lastSweep := s.opts.Now()
	for {
		next := s.dispatchDue()
		if now := s.opts.Now(); now.Sub(lastSweep) > time.Minute {
			s.sweepTombstones(now)
			lastSweep = now
		}
		timer.Reset(max(0, time.Until(next)))
		select {
		case <-s.stop:
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}

func (s *Server) sweepTombstones(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, until := range s.tombstones {
		if !now.Before(until) {
			delete(s.tombstones, name)
		}
	}
}

// dispatchDue starts every dispatch that is due and allowed, and returns when to look again.
func (s *Server) dispatchDue() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	next := now.Add(time.Minute)
	for name, q := range s.queues {
		for _, t := range q.forced {
			if t.forced && !t.deleted && !t.running {
				s.startLocked(name, q, t, now)
			}
		}
		q.forced = q.forced[:0]
		if q.pb.State != cloudtaskspb.Queue_RUNNING {
			continue
		}
		for q.due.Len() > 0 && q.running < int(q.pb.RateLimits.MaxConcurrentDispatches) {
			e := q.due[0]
			if e.stale() {
				heap.Pop(&q.due)
				continue
			}
			if e.at.After(now) {
				next = earliest(next, e.at)
				break
			}
			r := q.limiter.ReserveN(now, 1)
			if d := r.DelayFrom(now); !r.OK() || d > 0 {
				r.CancelAt(now)
				next = earliest(next, now.Add(max(d, time.Millisecond)))
				break
			}
			heap.Pop(&q.due)
			s.startLocked(name, q, e.t, now)
		}
	}
	return next
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// dispatchRequest is what one dispatch needs, copied out of the task under the lock.
type dispatchRequest struct {
	queueName, taskName string
	hr                  *cloudtaskspb.HttpRequest
	deadline            time.Duration
	retryCount          int32
	executionCount      int32
	eta                 time.Time
}

func (s *Server) startLocked(queueName string, q *queue, t *task, now time.Time) {
	t.running, t.forced = true, false
	q.running++
	pb := t.pb
	req := dispatchRequest{
		queueName: queueName, taskName: pb.Name, hr: pb.GetHttpRequest(),
		deadline: pb.GetDispatchDeadline().AsDuration(), retryCount: pb.DispatchCount,
		executionCount: pb.ResponseCount, eta: pb.ScheduleTime.AsTime(),
	}
	pb.DispatchCount++
	attempt := &cloudtaskspb.Attempt{ScheduleTime: pb.ScheduleTime, DispatchTime: timestamppb.New(now)}
	if pb.FirstAttempt == nil {
		pb.FirstAttempt = &cloudtaskspb.Attempt{DispatchTime: timestamppb.New(now)}
	}
	pb.LastAttempt = attempt
	s.inflight.Add(1)
	go func() {
		defer s.inflight.Done()
		if s.opts.DuplicateDispatch {
			s.inflight.Add(1)
			go func() { defer s.inflight.Done(); s.send(req) }() // its result is ignored
		}
		code, err := s.send(req)
		if s.opts.OnDispatch != nil {
			s.opts.OnDispatch(Dispatch{Task: req.taskName, ETA: req.eta, SentAt: now, Status: code, Err: err})
		}
		s.finish(queueName, t, code, err)
	}()
}

// send makes the HTTP request of one dispatch, as Cloud Tasks does.
func (s *Server) send(d dispatchRequest) (int, error) {
	deadline := d.deadline
	if deadline <= 0 {
		deadline = DefaultDeadline
	}
	ctx, cancel := context.WithTimeout(s.ctx, deadline)
	defer cancel()
	method := d.hr.GetHttpMethod().String()
	req, err := http.NewRequestWithContext(ctx, method, d.hr.GetUrl(), bytes.NewReader(d.hr.GetBody()))
	if err != nil {
		return 0, err
	}
	for k, v := range d.hr.GetHeaders() {
		req.Header.Set(k, v)
	}
	if len(d.hr.GetBody()) > 0 && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	_, queueID, _ := strings.Cut(d.queueName, "/queues/")
	_, taskID, _ := strings.Cut(d.taskName, "/tasks/")
	req.Header.Set("User-Agent", "Google-Cloud-Tasks")
	req.Header.Set("X-CloudTasks-QueueName", queueID)
	req.Header.Set("X-CloudTasks-TaskName", taskID)
	req.Header.Set("X-CloudTasks-TaskRetryCount", strconv.Itoa(int(d.retryCount)))
	req.Header.Set("X-CloudTasks-TaskExecutionCount", strconv.Itoa(int(d.executionCount)))
	req.Header.Set("X-CloudTasks-TaskETA", strconv.FormatFloat(float64(d.eta.UnixMicro())/1e6, 'f', 6, 64))
	if o := d.hr.GetOidcToken(); o != nil {
		aud := o.GetAudience()
		if aud == "" {
			aud = d.hr.GetUrl()
		}
		tok, err := s.idToken(aud, o.GetServiceAccountEmail(), s.opts.Now())
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)); err != nil && ctx.Err() != nil {
		return 0, ctx.Err()
	}
	return resp.StatusCode, nil
}

// finish applies a dispatch's result: 2xx deletes the task, anything else schedules a retry
// with the queue's backoff, or drops the task once its retries are exhausted.
func (s *Server) finish(queueName string, t *task, code int, sendErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.poke()
	t.running = false
	q := s.queues[queueName]
	if q != nil {
		q.running--
	}
	now := s.opts.Now()
	pb := t.pb
	if sendErr == nil {
		pb.ResponseCount++
		pb.LastAttempt.ResponseTime = timestamppb.New(now)
		pb.LastAttempt.ResponseStatus = &status.Status{Code: int32(httpToCode(code)), Message: http.StatusText(code)}
	} else {
		pb.LastAttempt.ResponseStatus = &status.Status{Code: int32(codes.Unavailable), Message: sendErr.Error()}
	}
	if s.closed && errors.Is(sendErr, context.Canceled) {
		return // cut off by shutdown: the task stays as it is and is dispatched after a restart
	}
	s.log.Info("cloud tasks dispatch", "task", pb.Name, "status", code, "error", errString(sendErr), "dispatch_count", pb.DispatchCount)
	if t.deleted || q == nil {
		return
	}
	if sendErr == nil && code >= 200 && code < 300 {
		s.removeTaskLocked(q, pb.Name, t, now)
		return
	}
	delay, ok := retryDelay(q.pb.GetRetryConfig(), pb.DispatchCount, now.Sub(pb.FirstAttempt.DispatchTime.AsTime()))
	if !ok {
		s.log.Warn("cloud tasks task dropped: retries exhausted", "task", pb.Name, "dispatch_count", pb.DispatchCount)
		s.removeTaskLocked(q, pb.Name, t, now)
		return
	}
	pb.ScheduleTime = timestamppb.New(now.Add(delay))
	q.schedule(t)
	s.record(record{Op: opTask, Task: pb})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// retryDelay returns the wait before the next dispatch after attempts failed ones, following
// Cloud Tasks' rule: min_backoff doubled max_doublings times, then growing linearly by that
// last interval, capped at max_backoff. ok is false when the task must be dropped: both
// max_attempts (unless -1, unlimited) and max_retry_duration (unless 0) are exhausted.
func retryDelay(rc *cloudtaskspb.RetryConfig, attempts int32, sinceFirst time.Duration) (time.Duration, bool) {
	maxAttempts := rc.GetMaxAttempts()
	maxDuration := rc.GetMaxRetryDuration().AsDuration()
	attemptsDone := maxAttempts != -1 && attempts >= maxAttempts
	durationDone := maxDuration > 0 && sinceFirst >= maxDuration
	switch {
	case maxAttempts == -1 && durationDone:
		return 0, false
	case attemptsDone && (maxDuration == 0 || durationDone):
		return 0, false
	}
	minB, maxB := rc.GetMinBackoff().AsDuration(), rc.GetMaxBackoff().AsDuration()
	doublings := int64(rc.GetMaxDoublings())
	retry := int64(attempts) - 1 // 0 for the first retry
	var d time.Duration
	if retry <= doublings {
		d = minB << min(retry, 40)
	} else {
		d = (minB << min(doublings, 40)) * time.Duration(retry-doublings+1)
	}
	if d > maxB || d < 0 {
		d = maxB
	}
	return d, true
}

// httpToCode maps an HTTP status to the gRPC code Cloud Tasks reports in response_status.
func httpToCode(code int) codes.Code {
	switch {
	case code >= 200 && code < 300:
		return codes.OK
	case code == http.StatusBadRequest:
		return codes.InvalidArgument
	case code == http.StatusUnauthorized:
		return codes.Unauthenticated
	case code == http.StatusForbidden:
		return codes.PermissionDenied
	case code == http.StatusNotFound:
		return codes.NotFound
	case code == http.StatusConflict:
		return codes.Aborted
	case code == http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case code == http.StatusServiceUnavailable:
		return codes.Unavailable
	case code == http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	case code >= 500:
		return codes.Internal
	default:
		return codes.Unknown
	}
}
