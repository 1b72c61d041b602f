package provider

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/transform"

	"github.com/payrelay/payrelay/functions/provider/providertest/bigday"
	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/schedule"
)

// A day of a large game, streamed: BILL_ROWS rows (default 200,000; infra/README.md's figure is
// 5,000,000) of a WeChat Pay and of an Alipay bill, generated in the providers' layouts as they
// download (deterministic, nothing written to disk), read and reconciled against a store holding
// the same day, beside the floor of just unpacking and splitting the same stream. Reported: rows
// per second of the bill's stream (generated, unpacked, decoded, split into lines and fields,
// read and compared against the day) and of the floor (the same stream generated, unpacked,
// decoded and split into lines and fields, with the readers' own splitter), their ratio, the
// whole run's time (the store's day read in too), and the peak heap of the reconciliation. The
// generator runs beside the reader, as a download would.
//
//	BILL_ROWS=5000000 go test ./functions/provider -run XXX -bench StreamedDay -benchtime 1x

const benchMch, benchDay = bigday.WechatMchID, "2026-11-24"

func benchRows(b *testing.B) int {
	if v, err := strconv.Atoi(os.Getenv("BILL_ROWS")); err == nil && v > 0 {
		return v
	}
	return 200000
}

// wechatDayStream writes a WeChat Pay ALL bill of n payments of 6.48 CNY, gzipped.
func wechatDayStream(w io.Writer, n int) error {
	zw := gzip.NewWriter(w)
	if err := bigday.WriteWechat(zw, benchDay, "wx", n, nil); err != nil {
		return err
	}
	return zw.Close()
}

// alipayDayStream writes an Alipay trade bill's zip of n payments of 6.48 CNY (GBK).
func alipayDayStream(day string) func(io.Writer, int) error {
	return func(w io.Writer, n int) error { return bigday.WriteAlipayZip(w, day, "ali", n) }
}

// piped runs gen into a pipe and returns its read side.
func piped(gen func(io.Writer) error) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(gen(pw)) }()
	return pr
}

// peak samples the heap while f runs and returns its highest HeapAlloc.
func peak(f func()) uint64 {
	runtime.GC()
	var top atomic.Uint64
	done := make(chan struct{})
	go func() {
		var m runtime.MemStats
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
				runtime.ReadMemStats(&m)
				if m.HeapAlloc > top.Load() {
					top.Store(m.HeapAlloc)
				}
			}
		}
	}()
	f()
	close(done)
	return top.Load()
}

// A day of 100,000 rows, streamed as the providers write it, reconciles with exactly the
// findings planted in the store's day: payments it lacks (ingested), amounts it holds otherwise
// (conflicts), payments the bill lacks (not in the bill).
func TestStreamedDayFindsExactlyWhatIsPlanted(t *testing.T) {
	t.Parallel()
	const n = 100000
	wp, al, app := benchProviders(t)
	lacks := map[int]bool{7: true, 50001: true, 99999: true}
	amount := map[int]int64{12: 649, 77777: 1}
	for _, tc := range []struct {
		provider, merchant, prefix string
		gen                        func(io.Writer, int) error
		read                       func(io.Reader, func(relay.BillRow) error) error
	}{
		{"wechatpay", benchMch, "wx", wechatDayStream, wechatReader(wp)},
		{"alipay", "2021004100000001", "ali", alipayDayStream(benchDay), alipayReader(al, app)},
	} {
		t.Run(tc.provider, func(t *testing.T) {
			t.Parallel()
			store := relaytest.NewStore()
			s, err := relay.NewService(relay.Config{Store: store, Queue: relaytest.NewQueue(), Clock: relaytest.NewClock(time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC)),
				Ladder: schedule.Default(), Lease: time.Minute, Reports: relaytest.NewReports(),
				Days: &relaytest.SyntheticDay{Provider: tc.provider, Merchant: tc.merchant, Prefix: tc.prefix, Day: benchDay, N: n, Lacks: lacks, Amount: amount, Extra: 4}, DayPartitions: 1, // SyntheticDay serves one reader in order
				Notifier: relaytest.NotifierFunc(func(context.Context, *relay.Payment, *relay.Notification, int) relay.NotifyResult {
					return relay.NotifyResult{}
				})})
			if err != nil {
				t.Fatal(err)
			}
			rep, err := s.Reconcile(context.Background(), relay.Bill{Provider: tc.provider, Environment: relay.EnvProduction, Merchant: tc.merchant, Day: benchDay,
				Rows: func(yield func(relay.BillRow) error) error {
					return tc.read(piped(func(w io.Writer) error { return tc.gen(w, n) }), yield)
				}}, "test")
			if err != nil {
				t.Fatal(err)
			}
			want := map[relay.FindingKind]int{relay.FindingMissingPayment: 3, relay.FindingConflict: 2, relay.FindingNotInBill: 4}
			for _, k := range relay.FindingKinds {
				if rep.Counts[k] != want[k] {
					t.Errorf("%s: %d, want %d (%+v)", k, rep.Counts[k], want[k], rep.Counts)
				}
			}
			if rep.BillPayments != n || rep.Matched != n-5 || store.Len() != 3 {
				t.Errorf("bill %d, matched %d, stored %d; want %d, %d, the 3 missing", rep.BillPayments, rep.Matched, store.Len(), n, n-5)
			}
			for _, f := range rep.Findings {
				if f.Kind == relay.FindingNotInBill && (f.StoredMinor != 648 || f.PaymentID == "") {
					t.Errorf("not in bill: %+v", f)
				}
			}
		})
	}
}

// benchProviders are the WeChat Pay merchant and Alipay app the streamed days are read for.
func benchProviders(tb testing.TB) (*WechatPay, *Alipay, alipayApp) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	wp, err := NewWechatPay([]WechatPayMerchant{{MchID: benchMch, APIv3Key: "0123456789abcdef0123456789abcdef", AppIDs: map[string]string{bigday.WechatAppID: "sword"},
		PlatformKeys: map[string]string{"BENCH": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}}})
	if err != nil {
		tb.Fatal(err)
	}
	return wp, &Alipay{}, alipayApp{AlipayApp: AlipayApp{AppID: "2021004100000001", Game: "sword"}, env: relay.EnvProduction}
}

// wechatReader reads a streamed WeChat Pay bill as Bill's Rows do.
func wechatReader(wp *WechatPay) func(io.Reader, func(relay.BillRow) error) error {
	return func(r io.Reader, yield func(relay.BillRow) error) error {
		packed := &countingReader{r: r}
		zr, err := gzip.NewReader(packed)
		if err != nil {
			return err
		}
		hash := sha1.New()
		_, err = ReadWechatBill(io.TeeReader(&inflationGuard{r: zr, packed: packed}, hash), func(row WechatBillRow) error {
			return yield(wp.billRow(wp.merchants[benchMch], row))
		})
		return err
	}
}

// alipayReader reads a streamed Alipay bill as Bill's Rows do.
func alipayReader(al *Alipay, app alipayApp) func(io.Reader, func(relay.BillRow) error) error {
	return func(r io.Reader, yield func(relay.BillRow) error) error {
		detail, err := OpenAlipayBillZip(r)
		if err != nil {
			return err
		}
		_, err = ReadAlipayBill(detail, func(_ *AlipayBill, row AlipayBillRow) error { return yield(al.billRow(app, row)) })
		return err
	}
}

func BenchmarkStreamedDay(b *testing.B) {
	n := benchRows(b)
	// BILL_MEMLIMIT (MiB) runs it as a function with GOMEMLIMIT would: the collector works to
	// keep the heap under it, so the peak shows what the day holds live, not the slack the
	// collector is allowed by default (twice the live heap).
	if v, err := strconv.Atoi(os.Getenv("BILL_MEMLIMIT")); err == nil && v > 0 {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(int64(v) << 20))
	}
	svc := func(days relay.DayFinder) *relay.Service {
		s, err := relay.NewService(relay.Config{Store: relaytest.NewStore(), Queue: relaytest.NewQueue(), Clock: relaytest.NewClock(time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC)),
			Ladder: schedule.Default(), Lease: time.Minute, Reports: relaytest.NewReports(), Days: days, DayPartitions: 1,
			Notifier: relaytest.NotifierFunc(func(context.Context, *relay.Payment, *relay.Notification, int) relay.NotifyResult {
				return relay.NotifyResult{}
			})})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	wp, al, app := benchProviders(b)
	for _, tc := range []struct {
		name, provider, merchant, prefix string
		gen                              func(io.Writer, int) error
		read                             func(io.Reader, func(relay.BillRow) error) error
		floor                            func(io.Reader) (int, error)
	}{
		{"wechatpay", "wechatpay", benchMch, "wx", wechatDayStream, wechatReader(wp),
			func(r io.Reader) (int, error) {
				zr, err := gzip.NewReader(r)
				if err != nil {
					return 0, err
				}
				lines, fields := 0, []string(nil)
				sc := bufio.NewScanner(zr)
				for sc.Scan() {
					fields = backtickFields(fields, sc.Text())
					lines++
				}
				return lines, sc.Err()
			}},
		{"alipay", "alipay", "2021004100000001", "ali", alipayDayStream(benchDay), alipayReader(al, app),
			func(r io.Reader) (int, error) {
				detail, err := zipEntry(r, isAlipayDetail)
				if err != nil {
					return 0, err
				}
				lines, fields := 0, []string(nil)
				sc := bufio.NewScanner(transform.NewReader(detail, simplifiedchinese.GB18030.NewDecoder()))
				for sc.Scan() {
					if fields, err = csvFields(fields, sc.Text()); err != nil {
						return lines, err
					}
					lines++
				}
				return lines, sc.Err()
			}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				start := time.Now()
				lines, err := tc.floor(piped(func(w io.Writer) error { return tc.gen(w, n) }))
				if err != nil || lines < n {
					b.Fatal(lines, err)
				}
				floor := float64(n) / time.Since(start).Seconds()

				s := svc(&relaytest.SyntheticDay{Provider: tc.provider, Merchant: tc.merchant, Prefix: tc.prefix, Day: benchDay, N: n})
				var rep *relay.Report
				var rerr error
				var took time.Duration // the bill's stream, read and compared row by row
				start = time.Now()
				base := peak(func() {})
				top := peak(func() {
					rep, rerr = s.Reconcile(context.Background(), relay.Bill{Provider: tc.provider, Environment: relay.EnvProduction, Merchant: tc.merchant, Day: benchDay,
						Rows: func(yield func(relay.BillRow) error) error {
							t0 := time.Now()
							defer func() { took = time.Since(t0) }()
							return tc.read(piped(func(w io.Writer) error { return tc.gen(w, n) }), yield)
						}}, "bench")
				})
				total := time.Since(start)
				if rerr != nil || rep.Matched != n || rep.BillPayments != n {
					b.Fatalf("%v: %+v", rerr, rep)
				}
				rate := float64(n) / took.Seconds()
				b.ReportMetric(float64(n), "rows")
				b.ReportMetric(rate, "rows/s")
				b.ReportMetric(floor, "floor-rows/s")
				b.ReportMetric(rate/floor, "x-floor")
				b.ReportMetric(float64(top-base)/(1<<20), "peak-MiB")
				b.ReportMetric(float64(top-base)/float64(n), "B/row")
				b.ReportMetric(total.Seconds(), "s-total")
			}
		})
	}
}
