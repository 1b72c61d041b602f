package provider

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/payrelay/payrelay/functions/relay"
)

// Daily reconciliation, WeChat Pay APIv3: the trade bill (交易账单) of one day.
//
// Documents and the readings taken:
//   - 申请交易账单: GET /v3/bill/tradebill?bill_date=yyyy-MM-dd&bill_type=ALL&tar_type=GZIP,
//     signed like every APIv3 request; the answer (signed, verified with the platform key) is
//     {"hash_type":"SHA1","hash_value":"...","download_url":"https://api.mch.weixin.qq.com/v3/billdownload/file?token=..."}.
//     400 NO_STATEMENT_EXIST ("账单文件不存在": no successful trade that day) is read as an empty
//     day; 400 STATEMENT_CREATING (the bill is being made) as not ready yet, to run again.
//   - 下载账单: GET download_url, signed as an APIv3 request over its path and query; the answer
//     is the file and is not signed, so it is checked against hash_value instead. Reading
//     taken: hash_value is the SHA1 of the bill as it is before compression (gzip is unpacked
//     first). payrelay signs only a download_url on the API host it called.
//   - 交易账单文件格式: a header row of column names; one row per payment (交易状态 SUCCESS, 交易时间
//     when it was paid) or refund (交易状态 REFUND, 交易时间 when the refund was accepted), each
//     field prefixed with a backtick (`) so that spreadsheets keep long numbers; then the
//     summary header (总交易单数,...) and one summary row. Columns are read by their header's
//     name. Amounts are in yuan. A refund row's 微信退款单号 is the refund_id its REFUND.SUCCESS
//     notification carries. Its amounts (交易账单 field definitions): 申请退款金额 is the refund
//     the merchant asked for, which the notification's amount.refund states; 退款金额 is the
//     settlement refund, 申请退款金额 less non-recharge (免充值) coupons. payrelay compares
//     申请退款金额 and keeps 退款金额 on the report (RefundFacts.SettlementMinor): comparing
//     退款金额 would report a false disagreement whenever a 免充值 coupon was used.
//   - The early layout, still served to merchants who never switched: 总金额 where the current
//     layout has 应结订单金额 and 订单金额, 代金券或立减优惠金额, 代金券或立减优惠退款金额, and no
//     申请退款金额; its 退款金额 is the refund as requested (coupons refunded apart). Read by the
//     same header lookup: 订单金额 else 总金额, 申请退款金额 else 退款金额.
//   - The bill is a snapshot: a refund still PROCESSING when it was made (退款状态 PROCESSING;
//     SUCCESS, REFUNDCLOSE and CHANGE are final) is queried again until it settles
//     (reconciliation's refund recovery). A row the reader cannot place (a time or
//     amount that does not parse, a row without backticks) is reported as a finding of its
//     own; the day's other rows are reconciled. Only the file's integrity (its header, its
//     summary, the count of rows) fails a day.

// WechatBillRow is one row of a WeChat Pay trade bill.
type WechatBillRow struct {
	At            time.Time // 交易时间
	AppID         string    // 公众账号ID
	MchID         string    // 商户号
	TransactionID string    // 微信订单号
	OutTradeNo    string    // 商户订单号
	State         string    // 交易状态: SUCCESS, REFUND, REVOKED, ...
	Currency      string    // 货币种类
	TotalMinor    int64     // 订单金额 (总金额 in the early layout), fen
	RefundID      string    // 微信退款单号
	OutRefundNo   string    // 商户退款单号
	// RefundMinor is the refund as requested, which its notification states: 申请退款金额 (退款金额
	// in the early layout), fen. SettlementRefundMinor is 退款金额: less 免充值 coupons.
	RefundMinor           int64
	SettlementRefundMinor int64
	RefundState           string // 退款状态
	// Line is the row's line in the file; Problem, when set, says why the row cannot be
	// placed (its other fields are as far as they were read).
	Line    int
	Problem string
}

// WechatBill is a WeChat Pay trade bill, read.
type WechatBill struct {
	// Layout is "current" (订单金额, 申请退款金额) or "early" (总金额).
	Layout string
	Rows   []WechatBillRow
}

// ParseWechatBill reads a WeChat Pay trade bill held in memory (UTF-8 text, unpacked): tests and
// fuzzing; payrelay reads bills as they download (ReadWechatBill).
func ParseWechatBill(text []byte) (WechatBill, error) {
	var bill WechatBill
	layout, err := ReadWechatBill(bytes.NewReader(text), func(row WechatBillRow) error {
		bill.Rows = append(bill.Rows, row)
		return nil
	})
	if err != nil {
		return WechatBill{}, err
	}
	bill.Layout = layout
	return bill, nil
}

// ReadWechatBill reads a WeChat Pay trade bill (UTF-8 text, unpacked) of either layout as a
// stream, calling row for each row in order, and returns the layout. The summary's 总交易单数
// must count the rows, so a truncated file is an error at its end, not a short day; a row that
// cannot be placed is a row with its Problem, not an error.
func ReadWechatBill(r io.Reader, row func(WechatBillRow) error) (layout string, err error) {
	var header, sumHeader map[string]int
	var cols *wechatColumns
	total, rows := -1, 0
	err = eachLine(r, "wechat pay bill", func(n int, line string) error {
		if strings.TrimSpace(line) == "" {
			return nil
		}
		switch {
		case header == nil:
			header = columns(line)
			for _, col := range []string{"交易时间", "公众账号ID", "商户号", "微信订单号", "商户订单号", "交易状态", "微信退款单号", "退款金额"} {
				if _, ok := header[col]; !ok {
					return fmt.Errorf("wechat pay bill: the header lacks column %s", col)
				}
			}
			totalCol, refundCol := "订单金额", "申请退款金额"
			layout = "current"
			if _, ok := header["订单金额"]; !ok {
				if _, early := header["总金额"]; !early {
					return errors.New("wechat pay bill: the header lacks column 订单金额 (or the early layout's 总金额)")
				}
				layout, totalCol, refundCol = "early", "总金额", "退款金额"
			}
			if _, ok := header[refundCol]; !ok {
				return fmt.Errorf("wechat pay bill: the header lacks column %s", refundCol)
			}
			cols = newWechatColumns(header, totalCol, refundCol)
			return nil
		case strings.HasPrefix(line, "总交易单数"):
			sumHeader = columns(line)
			return nil
		case total >= 0:
			return fmt.Errorf("wechat pay bill line %d: a row after the summary", n)
		}
		if sumHeader != nil {
			fields := backtickFields(nil, line)
			i, ok := sumHeader["总交易单数"]
			if !ok || i >= len(fields) {
				return errors.New("wechat pay bill: the summary lacks 总交易单数")
			}
			var err error
			if total, err = strconv.Atoi(fields[i]); err != nil || total < 0 {
				return fmt.Errorf("wechat pay bill: 总交易单数 %.20q is not a count", fields[i])
			}
			return nil
		}
		rows++
		return row(cols.row(line, n))
	})
	switch {
	case err != nil:
		return "", err
	case header == nil:
		return "", errors.New("wechat pay bill: no header row")
	case total < 0:
		return "", errors.New("wechat pay bill: truncated (no summary row)")
	case total != rows:
		return "", fmt.Errorf("wechat pay bill: the summary counts %d rows, the bill holds %d", total, rows)
	}
	return layout, nil
}

// wechatColumns are the positions of the columns a row is read by, found once from the
// header (-1: not in this layout), and the fields of the row being read (reused row to row).
type wechatColumns struct {
	// Each column's position.
	at, appID, mchID, tx, outTradeNo, state, currency, refundID, outRefundNo, refundState int
	total, refund, settlement                                                             int
	// The names the amounts are read under (they differ by layout), for a Problem.
	totalCol, refundCol string

	fields []string
	times  billTimes
}

func newWechatColumns(header map[string]int, totalCol, refundCol string) *wechatColumns {
	at := func(col string) int {
		if i, ok := header[col]; ok {
			return i
		}
		return -1
	}
	return &wechatColumns{at: at("交易时间"), appID: at("公众账号ID"), mchID: at("商户号"), tx: at("微信订单号"), outTradeNo: at("商户订单号"),
		state: at("交易状态"), currency: at("货币种类"), refundID: at("微信退款单号"), outRefundNo: at("商户退款单号"), refundState: at("退款状态"),
		total: at(totalCol), refund: at(refundCol), settlement: at("退款金额"), totalCol: totalCol, refundCol: refundCol}
}

// row reads one row by the header's columns; what does not parse is its Problem.
func (c *wechatColumns) row(line string, n int) WechatBillRow {
	row := WechatBillRow{Line: n}
	if !strings.HasPrefix(line, "`") {
		row.Problem = "a row whose fields do not start with a backtick"
		return row
	}
	c.fields = backtickFields(c.fields, line)
	get := func(i int) string {
		if i >= 0 && i < len(c.fields) {
			return c.fields[i]
		}
		return ""
	}
	row.AppID, row.MchID, row.TransactionID, row.OutTradeNo = get(c.appID), get(c.mchID), get(c.tx), get(c.outTradeNo)
	row.State, row.Currency, row.RefundID, row.OutRefundNo, row.RefundState = get(c.state), get(c.currency), get(c.refundID), get(c.outRefundNo), get(c.refundState)
	if row.Currency == "" {
		row.Currency = "CNY"
	}
	var err error
	if row.At, err = c.times.parse(get(c.at)); err != nil {
		row.Problem = fmt.Sprintf("交易时间 %.30q is not yyyy-MM-dd HH:mm:ss", get(c.at))
		return row
	}
	for _, a := range [...]struct {
		col string
		i   int
		to  *int64
	}{{c.totalCol, c.total, &row.TotalMinor}, {c.refundCol, c.refund, &row.RefundMinor}, {"退款金额", c.settlement, &row.SettlementRefundMinor}} {
		if *a.to, err = billAmount(get(a.i), row.Currency); err != nil {
			row.Problem = fmt.Sprintf("%s: %v", a.col, err)
			return row
		}
	}
	return row
}

// columns maps a header row's names to their positions.
func columns(line string) map[string]int {
	m := map[string]int{}
	for i, name := range strings.Split(line, ",") {
		m[strings.TrimSpace(strings.TrimPrefix(name, "\ufeff"))] = i
	}
	return m
}

// backtickFields splits a row whose every field starts with a backtick into dst's storage.
// Splitting on ",`" keeps a comma inside a value (a product name) in its field.
func backtickFields(dst []string, line string) []string {
	return splitTrimmed(dst, strings.TrimPrefix(line, "`"), ",`")
}

// splitTrimmed appends to dst[:0] the fields of s between each sep, each trimmed of spaces and
// tabs: one pass, and no allocation once dst has grown to a row's width (a bill's rows are
// split millions of times a day).
func splitTrimmed(dst []string, s, sep string) []string {
	dst = dst[:0]
	for {
		i := strings.Index(s, sep)
		if i < 0 {
			return append(dst, strings.TrimSpace(s))
		}
		dst = append(dst, strings.TrimSpace(s[:i]))
		s = s[i+len(sep):]
	}
}

// billAmount reads a bill's yuan amount ("6.48", "0.00", "") as minor units; empty and zero
// are 0.
func billAmount(s, currency string) (int64, error) {
	s = strings.TrimPrefix(s, "-")
	if s == "" || strings.Trim(s, "0") == "." || strings.Trim(s, "0") == "" {
		return 0, nil
	}
	return relay.ParseAmount(s, currency)
}

// BillAccounts implements the Biller interface: the merchants that can call the API.
func (wp *WechatPay) BillAccounts() []string {
	var out []string
	for id, m := range wp.merchants {
		if m.query != nil {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Bill downloads and reads merchant mchID's trade bill of day (yyyy-MM-dd).
func (wp *WechatPay) Bill(ctx context.Context, mchID, day string) (relay.Bill, error) {
	m, ok := wp.merchants[mchID]
	if !ok || m.query == nil {
		return relay.Bill{}, &QueryError{Reason: fmt.Sprintf("mchid %.40q is not a WeChat Pay merchant of ours with api_private_key", mchID)}
	}
	if _, err := time.Parse(time.DateOnly, day); err != nil {
		return relay.Bill{}, &QueryError{Reason: "bill day must be yyyy-MM-dd"}
	}
	bill := relay.Bill{Provider: wp.Name(), Environment: relay.EnvProduction, Merchant: mchID, Merchants: []string{mchID}, Day: day}
	resp, body, err := wp.apiGet(ctx, m, WechatTradeBillPath(day), MaxQueryAnswer, 10*time.Second)
	if err != nil {
		return relay.Bill{}, err
	}
	if _, err := wp.verifyAnswer(m, resp.Header, body); err != nil {
		return relay.Bill{}, err
	}
	var ans struct {
		Code, Message string
		HashType      string `json:"hash_type"`
		HashValue     string `json:"hash_value"`
		DownloadURL   string `json:"download_url"`
	}
	json.Unmarshal(body, &ans)
	switch {
	case resp.StatusCode == http.StatusOK:
	case ans.Code == "NO_STATEMENT_EXIST":
		return bill, nil
	case ans.Code == "STATEMENT_CREATING":
		return relay.Bill{}, ErrBillNotReady
	default:
		return relay.Bill{}, &QueryError{Reason: fmt.Sprintf("wechat pay refused the bill query: HTTP %d %.40s %.80s", resp.StatusCode, ans.Code, ans.Message)}
	}
	if ans.HashType != "SHA1" {
		return relay.Bill{}, &QueryError{Reason: fmt.Sprintf("wechat pay's bill hash_type %.10q: want SHA1", ans.HashType)}
	}
	// The download is signed with the merchant's key: only to the API host we called.
	u, err := url.Parse(ans.DownloadURL)
	base, _ := url.Parse(m.query.base)
	if err != nil || u.Scheme != base.Scheme || u.Host != base.Host {
		return relay.Bill{}, &QueryError{Reason: "wechat pay's download_url is not on the API host " + base.Host}
	}
	want, _ := hex.DecodeString(strings.ToLower(ans.HashValue))
	download := u.RequestURI()
	// The file is read as reconciliation reads the rows: unpacked, hashed and split as it
	// downloads. Its SHA1 is known only at its end, so the rows are compared and staged, and the
	// stream's error at the end (a hash that does not hold) discards them all.
	bill.Rows = func(yield func(relay.BillRow) error) error {
		resp, err := wp.apiStream(ctx, m, download)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return &QueryError{Reason: fmt.Sprintf("wechat pay's bill download answered HTTP %d", resp.StatusCode)}
		}
		packed := &countingReader{r: resp.Body}
		zr, err := gzip.NewReader(packed)
		if err != nil {
			return &QueryError{Reason: "wechat pay bill: not gzip: " + err.Error()}
		}
		hash := sha1.New()
		text := io.TeeReader(&inflationGuard{r: zr, packed: packed}, hash)
		_, err = ReadWechatBill(text, func(row WechatBillRow) error { return yield(wp.billRow(m, row)) })
		if err != nil {
			var qe *QueryError
			if errors.As(err, &qe) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			return &QueryError{Reason: err.Error()}
		}
		if _, err := io.Copy(io.Discard, text); err != nil { // what follows the summary, hashed too
			return &QueryError{Reason: "wechat pay bill: " + err.Error()}
		}
		if subtle.ConstantTimeCompare(hash.Sum(nil), want) != 1 {
			return &QueryError{Reason: "wechat pay bill: the file's SHA1 does not match the hash_value of the bill query: nothing of it is relayed"}
		}
		return nil
	}
	return bill, nil
}

// WechatTradeBillPath is the path and query of the day's trade bill query: every order and
// refund of the day, gzip.
func WechatTradeBillPath(day string) string {
	return "/v3/bill/tradebill?bill_date=" + url.QueryEscape(day) + "&bill_type=ALL&tar_type=GZIP"
}

// apiGet makes a signed APIv3 GET of pathAndQuery with bounded retries.
func (wp *WechatPay) apiGet(ctx context.Context, m *wechatMerchant, pathAndQuery string, limit int64, timeout time.Duration) (*http.Response, []byte, error) {
	return fetchHTTP(ctx, wp.client, "wechat pay api", limit, timeout, func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.query.base+pathAndQuery, nil)
		if err != nil {
			return nil, err
		}
		auth, err := WechatAuthorization(m.query.priv, m.MchID, m.query.serial, http.MethodGet, pathAndQuery, nil, wp.now())
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", auth)
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", "payrelay") // WeChat Pay refuses requests without one
		return req, nil
	})
}

// apiStream makes a signed APIv3 GET of pathAndQuery and returns the answer for its body to be
// read as a stream (a bill download); the caller closes it. No retry: a download that fails
// fails the run, which is repeated.
func (wp *WechatPay) apiStream(ctx context.Context, m *wechatMerchant, pathAndQuery string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.query.base+pathAndQuery, nil)
	if err != nil {
		return nil, err
	}
	auth, err := WechatAuthorization(m.query.priv, m.MchID, m.query.serial, http.MethodGet, pathAndQuery, nil, wp.now())
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", auth)
	req.Header.Set("User-Agent", "payrelay")
	resp, err := wp.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("wechat pay bill download: %w", err)
	}
	return resp, nil
}

// billRow turns a bill's row into what reconciliation ingests, as its notification would have
// been read; a row that cannot be is reported, a refund not settled is pending.
func (wp *WechatPay) billRow(m *wechatMerchant, row WechatBillRow) relay.BillRow {
	unreadable := func(refundID, reason string) relay.BillRow {
		return relay.BillRow{Unreadable: &relay.Finding{Kind: relay.FindingUnrelayable, OrderID: row.OutTradeNo, RefundID: refundID, BillMinor: row.TotalMinor,
			Action: "reported", Reason: reason}}
	}
	if row.Problem != "" {
		return unreadable(row.RefundID, fmt.Sprintf("bill line %d cannot be read: %s; compare it with the merchant platform's bill", row.Line, row.Problem))
	}
	pay := relay.Payment{Provider: wp.Name(), Environment: relay.EnvProduction, Merchant: m.MchID, OrderID: row.OutTradeNo, TransactionID: row.TransactionID,
		Currency: row.Currency, AppID: row.AppID}
	r := relay.Result{Payment: pay}
	amount := row.TotalMinor
	game, routed := m.AppIDs[row.AppID]
	switch {
	case row.MchID != m.MchID:
		return unreadable("", fmt.Sprintf("商户号 %.20s is not the bill's merchant", row.MchID))
	case row.State == "SUCCESS":
		r.Type = relay.TypePaymentSucceeded
		r.Payment.AmountMinor, r.Payment.PaidAt, r.Payment.Game = row.TotalMinor, row.At, game
		if !routed {
			return unreadable("", fmt.Sprintf("公众账号ID %.40s of merchant %s maps to no game (PROVIDER_CONFIG wechatpay app_ids)", row.AppID, m.MchID))
		}
	case row.State == "REFUND" && row.RefundState == "PROCESSING":
		// Not settled when the bill was made: asked again (reconciliation's refund recovery).
		return relay.BillRow{Pending: &relay.PendingRefund{OrderID: row.OutTradeNo, RefundID: row.RefundID, RefundNo: row.OutRefundNo,
			AmountMinor: row.RefundMinor, State: row.RefundState}}
	case row.State == "REFUND" && row.RefundState == "SUCCESS":
		r.Type, amount = relay.TypePaymentRefunded, row.RefundMinor
		// The row states its payment's total (订单金额): a refund of a payment payrelay never
		// received carries it.
		r.Payment.AmountMinor = row.TotalMinor
		r.Refund = &relay.RefundFacts{ID: row.RefundID, MerchantRefundNo: row.OutRefundNo, AmountMinor: row.RefundMinor, RefundedAt: row.At}
		if row.SettlementRefundMinor != row.RefundMinor {
			r.Refund.SettlementMinor = row.SettlementRefundMinor
		}
		r.Payment.Game = game // the stored payment's, if payrelay holds it
		if !routed {
			r.Payment.AppID = ""
		}
	case row.State == "REFUND":
		return unreadable(row.RefundID, fmt.Sprintf("refund %s ended %.20s: the money did not go back; an operator must act", row.RefundID, row.RefundState))
	}
	out, err := billEntry(r, row.OutTradeNo, amount)
	if err != nil {
		out.Unreadable.Reason = fmt.Sprintf("交易状态 %.20s: %s", row.State, err)
	}
	return out
}
