package provider

import (
	"archive/zip"
	"bufio"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/pem"
	"fmt"
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

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/functions/relay/relaytest"
	"github.com/payrelay/payrelay/schedule"
)

// A day of a large game, streamed: BILL_ROWS rows (default 200,000; infra/README.md's figure is
// 5,000,000) of a WeChat Pay and of an Alipay bill, generated in the providers' layouts as they
// download (deterministic, nothing written to disk), read and reconciled against a store holding
// the same day, beside the floor of just unpacking and splitting the same stream. Reported: rows
// per second of the bill's stream (generated, unpacked, split, read and compared against the
// day) and of the floor (the same stream generated, unpacked and split), their ratio, the whole
// run's time (the store's day read in too), and the peak heap of the reconciliation.
//
//	BILL_ROWS=5000000 go test ./functions/provider -run XXX -bench StreamedDay -benchtime 1x

const benchMch, benchApp, benchDay = "1900000109", "wxd678efh567hg6787", "2026-11-24"

func benchRows(b *testing.B) int {
	if v, err := strconv.Atoi(os.Getenv("BILL_ROWS")); err == nil && v > 0 {
		return v
	}
	return 200000
}

// wechatDayStream writes a WeChat Pay ALL bill of n payments of 6.48 CNY, gzipped.
func wechatDayStream(w io.Writer, n int) error {
	zw := gzip.NewWriter(w)
	bw := bufio.NewWriterSize(zw, 64<<10)
	bw.WriteString("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n")
	for i := range n {
		fmt.Fprintf(bw, "`2026-11-24 20:00:00,`%s,`%s,`0,`,`42000012342026112%011d,`wx-%09d,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`OTHERS,`CNY,`6.48,`0.00,`0,`0,`0.00,`0.00,`,`,`月卡 648元,`,`0.04000,`0.60%%,`6.48,`0.00,`\r\n", benchApp, benchMch, i, i)
	}
	bw.WriteString("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n")
	fmt.Fprintf(bw, "`%d,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\r\n", n)
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

// alipayDayStream writes an Alipay trade bill's zip of n payments of 6.48 CNY (GBK).
func alipayDayStream(w io.Writer, n int) error {
	zw := zip.NewWriter(w)
	f, err := zw.CreateHeader(&zip.FileHeader{Name: "2088102177846881_20261124_业务明细.csv", Method: zip.Deflate})
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(transform.NewWriter(f, simplifiedchinese.GB18030.NewEncoder()), 64<<10)
	bw.WriteString("#支付宝业务明细查询\n#账号：[20881021778468810156]\n#起始日期：[2026年11月24日 00:00:00]   终止日期：[2026年11月25日 00:00:00]\n")
	bw.WriteString("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注\n")
	for i := range n {
		fmt.Fprintf(bw, "2026112422001446881%09d\t,ali-%09d\t,交易\t,月卡\t,2026-11-24 19:59:40\t,2026-11-24 20:00:00\t,\t,\t,\t,\t,159****5620\t,6.48\t,6.48\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,\t,-0.04\t,0.00\t,\t\n", i, i)
	}
	bw.WriteString("#-----------------------------------------业务明细列表结束------------------------------------\n")
	fmt.Fprintf(bw, "#交易合计：%d笔，商家实收共：￥0.00元\n#退款合计：0笔，商家实收退款共：￥0.00元\n", n)
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

// piped runs gen into a pipe and returns its read side.
func piped(gen func(io.Writer) error) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(gen(pw)) }()
	return pr
}

// syntheticDay is a store holding a day of n payments of 6.48 CNY, one page at a time, made as
// they are read (the store's own memory is not the reconciliation's). It serves the pages in
// the order asked, trusting `after` to be the last id it served.
type syntheticDay struct {
	provider, merchant, prefix string
	n, next                    int
	// Planted differences from the bill: payments the store lacks, amounts it holds otherwise,
	// and payments it holds past the bill's n.
	lacks  map[int]bool
	amount map[int]int64
	extra  int
}

func (d *syntheticDay) CountOnBillDay(_ context.Context, key string) (int, error) {
	if key != relay.BillDayKey("paid", d.provider, d.merchant, benchDay) {
		return 0, nil
	}
	return d.n + d.extra - len(d.lacks), nil
}

func (d *syntheticDay) OnBillDay(_ context.Context, key, after, _ string, limit int) ([]*relay.Payment, error) {
	if key != relay.BillDayKey("paid", d.provider, d.merchant, benchDay) {
		return nil, nil
	}
	if after == "" {
		d.next = 0
	}
	at := time.Date(2026, 11, 24, 20, 0, 0, 0, relay.BillZone)
	var out []*relay.Payment
	for ; d.next < d.n+d.extra && len(out) < limit; d.next++ {
		if d.lacks[d.next] {
			continue
		}
		order := fmt.Sprintf("%s-%09d", d.prefix, d.next)
		amount := int64(648)
		if a, ok := d.amount[d.next]; ok {
			amount = a
		}
		out = append(out, &relay.Payment{ID: relay.PaymentID(relay.EnvProduction, d.provider, d.merchant, order), Provider: d.provider, Environment: relay.EnvProduction,
			Merchant: d.merchant, OrderID: order, AmountMinor: amount, Currency: "CNY", PaidAt: at, Game: "sword",
			Notifications: []relay.Notification{{Key: relay.KeyPaid, Type: relay.TypePaymentSucceeded, State: relay.StateDelivered, Via: relay.ViaNotify}}})
	}
	return out, nil
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
		{"alipay", "2021004100000001", "ali", alipayDayStream, alipayReader(al, app)},
	} {
		t.Run(tc.provider, func(t *testing.T) {
			t.Parallel()
			store := relaytest.NewStore()
			s, err := relay.NewService(relay.Config{Store: store, Queue: relaytest.NewQueue(), Clock: relaytest.NewClock(time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC)),
				Ladder: schedule.Default(), Lease: time.Minute, Reports: relaytest.NewReports(),
				Days: &syntheticDay{provider: tc.provider, merchant: tc.merchant, prefix: tc.prefix, n: n, lacks: lacks, amount: amount, extra: 4}, DayPartitions: 1, // syntheticDay serves one reader in order
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
	wp, err := NewWechatPay([]WechatPayMerchant{{MchID: benchMch, APIv3Key: "0123456789abcdef0123456789abcdef", AppIDs: map[string]string{benchApp: "sword"},
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
				lines := 0
				sc := bufio.NewScanner(zr)
				for sc.Scan() {
					lines++
				}
				return lines, sc.Err()
			}},
		{"alipay", "alipay", "2021004100000001", "ali", alipayDayStream, alipayReader(al, app),
			func(r io.Reader) (int, error) {
				detail, err := zipEntry(r, isAlipayDetail)
				if err != nil {
					return 0, err
				}
				lines := 0
				sc := bufio.NewScanner(transform.NewReader(detail, simplifiedchinese.GB18030.NewDecoder()))
				for sc.Scan() {
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

				s := svc(&syntheticDay{provider: tc.provider, merchant: tc.merchant, prefix: tc.prefix, n: n})
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
