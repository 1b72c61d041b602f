package chaos_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/webhook"
	"github.com/payrelay/payrelay/local/stack"
)

// 7. Bad input at volume, mixed with valid callbacks: every bad one gets a 4xx, none a 5xx, no
// panic, nothing stored; every valid one is delivered.
func TestS7BadInputAtVolume(t *testing.T) {
	need(t)
	const bad, valid, workers = 3000, 100, 16
	type job struct {
		order string
		req   func() (*http.Request, error)
		good  bool
	}
	rng := rand.New(rand.NewPCG(7, 7))
	other := webhook.NewSecret([]byte("not-the-ingest-secret-0123456789"))
	build := func(body []byte, secret webhook.Secret, ts time.Time, contentType string) func() (*http.Request, error) {
		return func() (*http.Request, error) {
			r, err := http.NewRequest(http.MethodPost, ingestURL(), bytes.NewReader(body))
			if err != nil {
				return nil, err
			}
			msgID := "msg_" + strconv.Itoa(rand.Int())
			r.Header.Set("Content-Type", contentType)
			r.Header.Set(webhook.HeaderID, msgID)
			r.Header.Set(webhook.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
			r.Header.Set(webhook.HeaderSignature, secret.Sign(msgID, ts, body))
			return r, nil
		}
	}
	var jobs []job
	for i := range bad {
		o := fmt.Sprintf("bad-%d", i)
		body := stack.SampleBody(o, "6.48", "CNY")
		var j job
		switch i % 8 {
		case 0: // random bytes, signed
			junk := make([]byte, rng.IntN(2000))
			for k := range junk {
				junk[k] = byte(rng.IntN(256))
			}
			j = job{o, build(junk, stack.IngestSecret, time.Now(), "application/json"), false}
		case 1: // truncated, signed as truncated
			j = job{o, build(body[:rng.IntN(len(body)-1)], stack.IngestSecret, time.Now(), "application/json"), false}
		case 2: // oversized
			big := bytes.Replace(body, []byte(`"gems_60"`), []byte(`"`+strings.Repeat("z", 70_000)+`"`), 1)
			j = job{o, build(big, stack.IngestSecret, time.Now(), "application/json"), false}
		case 3: // wrongly signed
			j = job{o, build(body, other, time.Now(), "application/json"), false}
		case 4: // replayed: an old timestamp
			j = job{o, build(body, stack.IngestSecret, time.Now().Add(-time.Hour), "application/json"), false}
		case 5: // well-formed but invalid: amount beyond the minor unit, unknown currency, zero
			inv := [][]byte{stack.SampleBody(o, "6.485", "CNY"), stack.SampleBody(o, "6", "XYZ"), stack.SampleBody(o, "0", "JPY")}[rng.IntN(3)]
			j = job{o, build(inv, stack.IngestSecret, time.Now(), "application/json"), false}
		case 6: // wrong content type
			j = job{o, build(body, stack.IngestSecret, time.Now(), "text/plain"), false}
		case 7: // a body tampered after signing
			sig := build(body, stack.IngestSecret, time.Now(), "application/json")
			j = job{o, func() (*http.Request, error) {
				r, err := sig()
				if err != nil {
					return nil, err
				}
				tampered := bytes.Replace(body, []byte(`"6.48"`), []byte(`"0.01"`), 1)
				r.Body = io.NopCloser(bytes.NewReader(tampered))
				r.ContentLength = int64(len(tampered))
				return r, nil
			}, false}
		}
		jobs = append(jobs, j)
	}
	for _, o := range orders("bulk", valid) {
		jobs = append(jobs, job{o, build(stack.SampleBody(o, "6.48", "CNY"), stack.IngestSecret, time.Now(), "application/json"), true})
	}
	rng.Shuffle(len(jobs), func(i, k int) { jobs[i], jobs[k] = jobs[k], jobs[i] })
	var refused, fivexx, okBad atomic.Int64
	ch := make(chan job)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				for try := 0; ; try++ {
					r, err := j.req()
					if err != nil {
						t.Error(err)
						break
					}
					resp, err := http.DefaultClient.Do(r)
					if err != nil {
						t.Errorf("%s: %v", j.order, err)
						break
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch {
					case resp.StatusCode >= 500:
						fivexx.Add(1)
						if j.good && try < 20 {
							continue // a provider retries
						}
					case j.good && resp.StatusCode != 200:
						t.Errorf("%s: valid callback answered %d", j.order, resp.StatusCode)
					case !j.good && resp.StatusCode >= 400:
						refused.Add(1)
					case !j.good:
						okBad.Add(1)
						t.Errorf("%s: bad callback answered %d", j.order, resp.StatusCode)
					}
					break
				}
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	h.mu.Lock()
	h.summary.BadTried += bad
	h.summary.BadRefused += int(refused.Load())
	h.summary.Sent += valid
	h.summary.Ingest5xx["7-bad-input"] += int(fivexx.Load())
	h.mu.Unlock()
	if fivexx.Load() != 0 {
		t.Errorf("%d answers were 5xx under bad input at volume, want none", fivexx.Load())
	}
	if refused.Load() != bad {
		t.Errorf("%d of %d bad callbacks were refused with a 4xx", refused.Load(), bad)
	}
	for i := range bad {
		if _, _, err := h.store.Get(context.Background(), id(fmt.Sprintf("bad-%d", i))); err == nil {
			t.Errorf("bad-%d was stored", i)
		}
	}
	waitTerminal(t, orders("bulk", valid), 60*time.Second)
	for o, p := range check(t, "7-bad-input", orders("bulk", valid), false) {
		if p.Paid().State != relay.StateDelivered {
			t.Errorf("%s: %s", o, p.Paid().State)
		}
	}
	// The process serving the functions is still the one we started: nothing crashed it.
	if h.fn.ProcessState != nil {
		t.Errorf("fnserver exited: %v", h.fn.ProcessState)
	}
}

var jsonUnmarshal = json.Unmarshal
