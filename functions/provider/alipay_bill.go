package provider

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/transform"

	"github.com/payrelay/payrelay/functions/relay"
)

// Daily reconciliation, Alipay: the trade bill (业务账单) of one day.
//
// Documents and the readings taken:
//   - alipay.data.dataservice.bill.downloadurl.query (查询对账单下载地址): biz_content
//     {"bill_type":"trade","bill_date":"yyyy-MM-dd"}, signed like every OpenAPI request; the
//     answer's bill_download_url is valid for 30 seconds. sub_code isp.bill_not_exist
//     (BILL_NOT_EXIST, "there is no report for the day") is read as a day without trades.
//   - The file (账单格式说明) is a zip holding two CSV files in GBK: <PID>_<yyyyMMdd>_业务明细.csv,
//     the detail, and ..._业务明细(汇总).csv, the summary by day, which is not needed. The
//     detail opens with '#' lines (the title, the account, the dates, a dashed rule), then a
//     header row, one row per trade or refund (values padded with tabs and spaces), a closing
//     rule ("...业务明细列表结束..."), and summary lines "#交易合计：N笔，..." and "#退款合计：M笔，...".
//     Columns are read by their header's name, not their position.
//   - A row's 业务类型 is 交易 (a payment, 完成时间 when it was paid) or 退款 (a refund, 完成时间
//     when it completed); a refund row names its trade (支付宝交易号, 商户订单号) and its request
//     number in 退款批次号/请求号, which is the out_biz_no its notification carries. Reading
//     taken: a refund row's 订单金额（元） is the refunded amount, negative; its absolute value is
//     the refund's amount.
//   - The bill covers the Alipay account (PID), which several apps may share: configure the
//     account's seller_id on each of its apps, so that one bill reconciles them all together.
//   - The account line, as Alipay writes it: #账号：[20881021778468810156], the 16-digit PID
//     (2088...) followed by a four-digit suffix (the bill's sub-account; 0156 in the bills
//     seen). A bare PID (the layout of older bills) is read too. The PID is checked against the
//     app's seller_id when one is configured: a bill of another account is refused whole.

// ErrBillNotReady: the provider has not produced the day's bill yet; run again later.
var ErrBillNotReady = errors.New("the provider's bill of that day is not ready yet")

// AlipayBillRow is one row of an Alipay trade bill's detail.
type AlipayBillRow struct {
	TradeNo     string // 支付宝交易号
	OutTradeNo  string // 商户订单号
	Kind        string // 业务类型: 交易 or 退款
	FinishedAt  time.Time
	AmountMinor int64  // 订单金额, fen; a refund's is its (positive) amount
	RefundNo    string // 退款批次号/请求号
}

// AlipayBill is an Alipay trade bill's detail, read.
type AlipayBill struct {
	Account string // #账号：[...] as written
	PID     string // its 2088... PID, without the suffix; "" when the line holds none
	Rows    []AlipayBillRow
}

// alipayPID reads the PID of an account line's value: 2088 and 12 more digits, alone or
// followed by Alipay's four-digit suffix.
func alipayPID(account string) string {
	if (len(account) == 16 || len(account) == 20) && strings.HasPrefix(account, "2088") && allDigits(account) {
		return account[:16]
	}
	return ""
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

var (
	alipayTradeTotal  = regexp.MustCompile(`^#交易合计[:：]\s*(\d+)\s*笔`)
	alipayRefundTotal = regexp.MustCompile(`^#退款合计[:：]\s*(\d+)\s*笔`)
	alipayAccount     = regexp.MustCompile(`^#账号[:：]\s*\[?([0-9A-Za-z]+)`)
)

// ParseAlipayBill reads the detail CSV of an Alipay trade bill held in memory (GBK, as it comes
// in the zip): tests and fuzzing; payrelay reads bills as they download (ReadAlipayBill).
func ParseAlipayBill(gbk []byte) (AlipayBill, error) {
	var rows []AlipayBillRow
	bill, err := ReadAlipayBill(bytes.NewReader(gbk), func(_ *AlipayBill, row AlipayBillRow) error {
		rows = append(rows, row)
		return nil
	})
	if err != nil {
		return AlipayBill{}, err
	}
	bill.Rows = rows
	return bill, nil
}

// alipayColumns are the detail's columns a row is read by, found by name in its header.
var alipayColumns = [...]string{aliTradeNo: "支付宝交易号", aliOutTradeNo: "商户订单号", aliKind: "业务类型", aliFinished: "完成时间", aliAmount: "订单金额（元）", aliRefundNo: "退款批次号/请求号"}

const (
	aliTradeNo = iota
	aliOutTradeNo
	aliKind
	aliFinished
	aliAmount
	aliRefundNo
)

// ReadAlipayBill reads the detail CSV of an Alipay trade bill (GBK) as a stream, calling row for
// each row in order with the bill's header as read so far (its account: the '#' lines come
// first). It checks the summary lines' counts against the rows, so a truncated file is an error
// at its end, not a short day. The returned bill holds the header, not the rows.
func ReadAlipayBill(gbk io.Reader, row func(*AlipayBill, AlipayBillRow) error) (AlipayBill, error) {
	var bill AlipayBill
	var cols []int       // alipayColumns' positions, from the header
	var scratch []string // a row's fields, reused row to row
	var times billTimes
	trades, refunds := -1, -1
	seenTrades, seenRefunds := 0, 0
	ended := false
	text := transform.NewReader(gbk, simplifiedchinese.GB18030.NewDecoder())
	err := eachLine(text, "alipay bill", func(n int, line string) error {
		if strings.TrimSpace(line) == "" {
			return nil
		}
		if strings.HasPrefix(line, "#") {
			switch {
			case alipayAccount.MatchString(line):
				bill.Account = alipayAccount.FindStringSubmatch(line)[1]
				bill.PID = alipayPID(bill.Account)
			case strings.Contains(line, "业务明细列表结束"):
				ended = true
			case alipayTradeTotal.MatchString(line):
				trades, _ = strconv.Atoi(alipayTradeTotal.FindStringSubmatch(line)[1])
			case alipayRefundTotal.MatchString(line):
				refunds, _ = strconv.Atoi(alipayRefundTotal.FindStringSubmatch(line)[1])
			}
			return nil
		}
		if ended {
			return fmt.Errorf("alipay bill line %d: a row after the end of the detail", n)
		}
		fields, err := csvFields(scratch, line)
		if err != nil {
			return fmt.Errorf("alipay bill line %d: %w", n, err)
		}
		scratch = fields
		if cols == nil {
			header := map[string]int{}
			for i, f := range fields {
				header[f] = i
			}
			cols = make([]int, len(alipayColumns))
			for c, name := range alipayColumns {
				i, ok := header[name]
				if !ok {
					return fmt.Errorf("alipay bill: the header lacks column %s", name)
				}
				cols[c] = i
			}
			return nil
		}
		get := func(c int) string {
			if i := cols[c]; i < len(fields) {
				return fields[i]
			}
			return ""
		}
		r := AlipayBillRow{TradeNo: get(aliTradeNo), OutTradeNo: get(aliOutTradeNo), Kind: get(aliKind), RefundNo: get(aliRefundNo)}
		if r.FinishedAt, err = times.parse(get(aliFinished)); err != nil {
			return fmt.Errorf("alipay bill line %d: 完成时间 %.30q is not yyyy-MM-dd HH:mm:ss", n, get(aliFinished))
		}
		if r.AmountMinor, err = relay.ParseAmount(strings.TrimPrefix(get(aliAmount), "-"), "CNY"); err != nil {
			return fmt.Errorf("alipay bill line %d: 订单金额: %w", n, err)
		}
		switch r.Kind {
		case "交易":
			seenTrades++
		case "退款":
			seenRefunds++
		}
		return row(&bill, r)
	})
	switch {
	case err != nil:
		return AlipayBill{}, err
	case cols == nil:
		return AlipayBill{}, errors.New("alipay bill: no header row")
	case !ended || trades < 0:
		return AlipayBill{}, errors.New("alipay bill: truncated (no end of the detail or no #交易合计 line)")
	case trades != seenTrades || refunds >= 0 && refunds != seenRefunds:
		return AlipayBill{}, fmt.Errorf("alipay bill: the summary counts %d trades and %d refunds, the detail holds %d and %d", trades, refunds, seenTrades, seenRefunds)
	}
	return bill, nil
}

// csvFields splits one bill line into dst's storage: comma-separated, each value trimmed of
// the tabs and spaces the providers pad with. A line with a quote goes through encoding/csv;
// the others (all of them, in the bills seen) are split directly: a day's bill reads twice as
// fast.
func csvFields(dst []string, line string) ([]string, error) {
	if !strings.ContainsRune(line, '"') {
		return splitTrimmed(dst, line, ","), nil
	}
	r := csv.NewReader(strings.NewReader(line))
	r.LazyQuotes, r.FieldsPerRecord = true, -1
	fields, err := r.Read()
	if err != nil {
		return nil, err
	}
	for i := range fields {
		fields[i] = strings.TrimSpace(fields[i])
	}
	return fields, nil
}

// OpenAlipayBillZip reads a bill's zip as it downloads and returns the detail CSV's content
// (its name ends in 业务明细.csv; GBK), unpacked as it is read and refused if it inflates past
// MaxInflation times its packed size.
func OpenAlipayBillZip(r io.Reader) (io.Reader, error) {
	detail, err := zipEntry(r, isAlipayDetail)
	if err != nil {
		return nil, fmt.Errorf("alipay bill: %w", err)
	}
	return detail, nil
}

// BillAccounts implements the Biller interface: one app per Alipay account that can ask for
// bills (it has a private_key); apps sharing a seller_id are one account.
func (a *Alipay) BillAccounts() []string {
	var out []string
	seen := map[string]bool{}
	for _, id := range slices.Sorted(maps.Keys(a.apps)) {
		app := a.apps[id]
		group := a.group(app)
		if app.priv == nil || seen[group[0]] {
			continue
		}
		seen[group[0]] = true
		out = append(out, id)
	}
	return out
}

// group lists the apps of app's Alipay account, sorted: those with its seller_id, or app
// alone when it has none.
func (a *Alipay) group(app alipayApp) []string {
	if app.SellerID == "" {
		return []string{app.AppID}
	}
	var out []string
	for _, id := range slices.Sorted(maps.Keys(a.apps)) {
		// A sandbox app's account is the sandbox's: never grouped with production apps.
		if a.apps[id].SellerID == app.SellerID && a.apps[id].env == app.env {
			out = append(out, id)
		}
	}
	return out
}

// Bill downloads and reads the trade bill of day (yyyy-MM-dd) of appID's account.
func (a *Alipay) Bill(ctx context.Context, appID, day string) (relay.Bill, error) {
	app, ok := a.apps[appID]
	if !ok || app.priv == nil {
		return relay.Bill{}, &QueryError{Reason: fmt.Sprintf("app %.40q is not an Alipay app of ours with a private_key", appID)}
	}
	if _, err := time.Parse(time.DateOnly, day); err != nil {
		return relay.Bill{}, &QueryError{Reason: "bill day must be yyyy-MM-dd"}
	}
	// The account's other apps come after this one: Merchants[0] is the bill's merchant.
	merchants := []string{appID}
	for _, id := range a.group(app) {
		if id != appID {
			merchants = append(merchants, id)
		}
	}
	bill := relay.Bill{Provider: a.Name(), Environment: app.env, Merchant: appID, Merchants: merchants, Day: day}
	raw, err := a.openAPI(ctx, app, "alipay.data.dataservice.bill.downloadurl.query", map[string]any{"bill_type": "trade", "bill_date": day})
	if err != nil {
		return relay.Bill{}, err
	}
	r, err := verifyAlipayAnswer(app, raw, "alipay_data_dataservice_bill_downloadurl_query_response")
	if err != nil {
		return relay.Bill{}, err
	}
	str := func(k string) string { s, _ := r[k].(string); return s }
	switch code := str("code"); {
	case code == "40004" && strings.EqualFold(str("sub_code"), "isp.bill_not_exist"):
		return bill, nil // no trade that day
	case code != "10000":
		return relay.Bill{}, &QueryError{Reason: fmt.Sprintf("alipay refused the bill query: %.10s %.60s %.60s", code, str("sub_code"), str("sub_msg"))}
	}
	u, err := url.Parse(str("bill_download_url"))
	if err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return relay.Bill{}, &QueryError{Reason: "alipay's bill_download_url is not an http(s) URL"}
	}
	// The file is read as reconciliation reads the rows: unpacked, decoded and split as it
	// downloads (bill_download_url is valid for 30 seconds: the stream starts at once).
	bill.Rows = func(yield func(relay.BillRow) error) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		resp, err := a.client.Do(req)
		if err != nil {
			return fmt.Errorf("alipay bill download: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return &QueryError{Reason: fmt.Sprintf("alipay's bill download answered HTTP %d", resp.StatusCode)}
		}
		detail, err := OpenAlipayBillZip(resp.Body)
		if err == nil {
			_, err = ReadAlipayBill(detail, func(b *AlipayBill, row AlipayBillRow) error {
				if app.SellerID != "" && b.PID != app.SellerID {
					return &QueryError{Reason: fmt.Sprintf("alipay bill: the bill's account %.30q is not PID %s, app %s's seller_id: refused", b.Account, app.SellerID, appID)}
				}
				return yield(a.billRow(app, row))
			})
		}
		var qe *QueryError
		switch {
		case err == nil, errors.As(err, &qe), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return err
		}
		return &QueryError{Reason: err.Error()}
	}
	return bill, nil
}

// billRow turns a bill's row into what reconciliation ingests, as the notification of it would
// have been read; a row that cannot be is reported.
func (a *Alipay) billRow(app alipayApp, row AlipayBillRow) relay.BillRow {
	pay := relay.Payment{Provider: a.Name(), Environment: app.env, Merchant: app.AppID, OrderID: row.OutTradeNo, TransactionID: row.TradeNo, Currency: "CNY",
		AppID: app.AppID, Game: app.Game}
	r := relay.Result{Payment: pay}
	switch row.Kind {
	case "交易":
		r.Type = relay.TypePaymentSucceeded
		r.Payment.AmountMinor, r.Payment.PaidAt = row.AmountMinor, row.FinishedAt
	case "退款":
		r.Type = relay.TypePaymentRefunded
		r.Refund = &relay.RefundFacts{ID: row.RefundNo, MerchantRefundNo: row.RefundNo, AmountMinor: row.AmountMinor, RefundedAt: row.FinishedAt}
	}
	out, err := billEntry(r, row.OutTradeNo, row.AmountMinor)
	if err != nil {
		out.Unreadable.Reason = fmt.Sprintf("业务类型 %s: %s", row.Kind, err)
	}
	return out
}

// billEntry is a bill's row as an entry, or, when it cannot be relayed as it stands, as an
// unreadable finding (the returned error says why).
func billEntry(r relay.Result, order string, amount int64) (relay.BillRow, error) {
	err := r.Validate()
	if r.Type == "" {
		err = errors.New("not a payment or a refund")
	}
	if err == nil {
		return relay.BillRow{Entry: &r}, nil
	}
	f := relay.Finding{Kind: relay.FindingUnrelayable, OrderID: order, BillMinor: amount, Action: "reported", Reason: err.Error()}
	if r.Refund != nil {
		f.RefundID = r.Refund.ID
	}
	return relay.BillRow{Unreadable: &f}, err
}
