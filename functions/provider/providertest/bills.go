package providertest

import (
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"golang.org/x/text/encoding/simplifiedchinese"
)

// Bills in the providers' documented layouts, and the stand-ins' bill endpoints.

// AlipayBillLine is one row of an Alipay trade bill: Kind 交易 or 退款; Amount in yuan (a
// refund's positive: the bill writes it negative).
type AlipayBillLine struct {
	TradeNo, OutTradeNo, Kind, Finished, Amount, RefundNo string
}

// AlipayBillCSV is the detail CSV of an Alipay trade bill (账单格式说明), in UTF-8: the '#' lines
// (the account as Alipay writes it, the PID and a four-digit suffix),
// the header, the rows (each value followed by a tab, as Alipay pads them), the closing rule and
// the summary lines. AlipayBillZip encodes it in GBK.
func AlipayBillCSV(pid, day string, lines []AlipayBillLine) string {
	d, _ := time.Parse(time.DateOnly, day)
	var b strings.Builder
	fmt.Fprintf(&b, "#支付宝业务明细查询\n#账号：[%s0156]\n", pid)
	fmt.Fprintf(&b, "#起始日期：[%s 00:00:00]   终止日期：[%s 00:00:00]\n", d.Format("2006年01月02日"), d.AddDate(0, 0, 1).Format("2006年01月02日"))
	b.WriteString("#-----------------------------------------业务明细列表----------------------------------------\n")
	b.WriteString("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注\n")
	trades, refunds := 0, 0
	for _, l := range lines {
		amount := l.Amount
		if l.Kind == "退款" {
			amount = "-" + amount
			refunds++
		} else {
			trades++
		}
		fields := []string{l.TradeNo, l.OutTradeNo, l.Kind, "月卡 648元 · 王者之剑", l.Finished, l.Finished, "", "", "", "", "159****5620",
			amount, amount, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00", l.RefundNo, "0.00", "0.00", ""}
		for i, f := range fields {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(f + "\t")
		}
		b.WriteByte('\n')
	}
	b.WriteString("#-----------------------------------------业务明细列表结束------------------------------------\n")
	fmt.Fprintf(&b, "#交易合计：%d笔，商家实收共：￥0.00元，商家实收退款共：￥0.00元，支付宝红包共：￥0.00元，集分宝共：￥0.00元\n", trades)
	fmt.Fprintf(&b, "#退款合计：%d笔，商家实收退款共：￥0.00元，支付宝红包退款共：￥0.00元\n", refunds)
	fmt.Fprintf(&b, "#导出时间：[%s 09:12:34]\n", d.AddDate(0, 0, 1).Format("2006年01月02日"))
	return b.String()
}

// GBK encodes UTF-8 text in GBK (GB18030), as Alipay writes its bills.
func GBK(s string) []byte {
	b, _ := simplifiedchinese.GB18030.NewEncoder().Bytes([]byte(s))
	return b
}

// AlipayBillZip is the zip Alipay's bill_download_url serves: the detail and the daily
// summary, named <PID>_<yyyyMMdd>_业务明细.csv and ..._业务明细(汇总).csv, names and contents in GBK.
func AlipayBillZip(pid, day string, lines []AlipayBillLine) []byte {
	compact := strings.ReplaceAll(day, "-", "")
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, text := range map[string]string{
		pid + "_" + compact + "_业务明细.csv":     AlipayBillCSV(pid, day, lines),
		pid + "_" + compact + "_业务明细(汇总).csv": "#支付宝业务汇总查询\n#账号：[" + pid + "]\n门店编号,门店名称,交易订单总笔数,退款订单总笔数\n",
	} {
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: string(GBK(name)), NonUTF8: true, Method: zip.Deflate})
		w.Write(GBK(text))
	}
	zw.Close()
	return buf.Bytes()
}

// WechatBillLine is one row of a WeChat Pay trade bill: State SUCCESS (a payment) or REFUND;
// amounts in yuan. Refund is the refund as requested (申请退款金额, what its notification
// states); Settled, when set, the settlement refund (退款金额: less 免充值 coupons), which is
// Refund otherwise.
type WechatBillLine struct {
	At, AppID, MchID, TransactionID, OutTradeNo, State, Total, RefundID, OutRefundNo, Refund, Settled, RefundState string
}

// WechatBillText is a WeChat Pay ALL trade bill (交易账单文件格式): the header, the rows with
// every field behind a backtick, the summary header and the summary row.
func WechatBillText(lines []WechatBillLine) []byte {
	var b strings.Builder
	b.WriteString("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n")
	for _, l := range lines {
		refund, settled, refundID, refundNo, refundType, settle := "0.00", "0.00", "0", "0", "", l.Total
		if l.State == "REFUND" {
			refund, settled, refundID, refundNo, refundType, settle = l.Refund, l.Refund, l.RefundID, l.OutRefundNo, "ORIGINAL", "0.00"
			if l.Settled != "" {
				settled = l.Settled
			}
		}
		writeBacktickRow(&b, []string{l.At, l.AppID, l.MchID, "0", "", l.TransactionID, l.OutTradeNo, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "JSAPI", l.State,
			"OTHERS", "CNY", settle, "0.00", refundID, refundNo, settled, "0.00", refundType, l.RefundState, "月卡, 648元", "", "0.00000", "0.60%", l.Total, refund, ""})
	}
	b.WriteString("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n")
	fmt.Fprintf(&b, "`%d,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\r\n", len(lines))
	return []byte(b.String())
}

// WechatEarlyBillText is the same bill in WeChat Pay's early layout, still served to merchants
// who never switched: 总金额 for the order, 代金券或立减优惠金额, and 退款金额 the refund as
// requested (no 订单金额, no 申请退款金额).
func WechatEarlyBillText(lines []WechatBillLine) []byte {
	var b strings.Builder
	b.WriteString("交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,代金券或立减优惠金额,微信退款单号,商户退款单号,退款金额,代金券或立减优惠退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率\r\n")
	for _, l := range lines {
		refund, refundID, refundNo, refundType := "0.00", "0", "0", ""
		if l.State == "REFUND" {
			refund, refundID, refundNo, refundType = l.Refund, l.RefundID, l.OutRefundNo, "ORIGINAL"
		}
		writeBacktickRow(&b, []string{l.At, l.AppID, l.MchID, "0", "", l.TransactionID, l.OutTradeNo, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "JSAPI", l.State,
			"OTHERS", "CNY", l.Total, "0.00", refundID, refundNo, refund, "0.00", refundType, l.RefundState, "月卡", "", "0.00000", "0.60%"})
	}
	b.WriteString("总交易单数,总交易额,总退款金额,总代金券或立减优惠退款金额,手续费总金额\r\n")
	fmt.Fprintf(&b, "`%d,`0.00,`0.00,`0.00,`0.00000\r\n", len(lines))
	return []byte(b.String())
}

func writeBacktickRow(b *strings.Builder, fields []string) {
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("`" + f)
	}
	b.WriteString("\r\n")
}

// download is a bill file a stand-in serves once asked for, until it expires.
type download struct {
	body    []byte
	gen     func(io.Writer) error // a streamed bill: generated and gzipped as it downloads
	expires time.Time
}

func serveDownload(w http.ResponseWriter, d download, ok bool, contentType string) {
	if !ok || time.Now().After(d.expires) {
		http.Error(w, "the download link is invalid or expired", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", contentType)
	if d.gen == nil {
		w.Write(d.body)
		return
	}
	zw := gzip.NewWriter(w)
	if err := d.gen(zw); err != nil {
		panic(http.ErrAbortHandler) // the client sees a broken download, as a cut transfer
	}
	zw.Close()
}

func token() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// SetBill makes the gateway serve a zip (AlipayBillZip) as the trade bill of day.
func (g *AlipayGateway) SetBill(day string, zipped []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.bills[day] = zipped
}

// serveBillQuery answers alipay.data.dataservice.bill.downloadurl.query: a download URL valid
// 30 seconds, or isp.bill_not_exist.
func (g *AlipayGateway) serveBillQuery(w http.ResponseWriter, bizContent string, refuse func(code, msg, subCode, subMsg string)) {
	const key = "alipay_data_dataservice_bill_downloadurl_query_response"
	var biz struct {
		BillType string `json:"bill_type"`
		BillDate string `json:"bill_date"`
	}
	if json.Unmarshal([]byte(bizContent), &biz) != nil || biz.BillType != "trade" {
		refuse("40002", "Invalid Arguments", "isv.invalid-parameter", "bill_type")
		return
	}
	if _, err := time.Parse(time.DateOnly, biz.BillDate); err != nil {
		refuse("40002", "Invalid Arguments", "isv.invalid-parameter", "bill_date")
		return
	}
	g.mu.Lock()
	zipped, ok := g.bills[biz.BillDate]
	id := token()
	if ok {
		g.downloads[id] = download{body: zipped, expires: time.Now().Add(30 * time.Second)}
	}
	g.mu.Unlock()
	if !ok {
		g.answerAs(w, key, map[string]string{"code": "40004", "msg": "Business Failed", "sub_code": "isp.bill_not_exist", "sub_msg": "账单不存在"})
		return
	}
	u := g.srv.URL + "/downloadBillFile.resource?bizType=trade&userId=2088102177846881&fileType=csv.zip&bizDates=" +
		strings.ReplaceAll(biz.BillDate, "-", "") + "&downloadFileName=" + strings.ReplaceAll(biz.BillDate, "-", "") + ".csv.zip&fileId=" + id
	g.answerAs(w, key, map[string]string{"code": "10000", "msg": "Success", "bill_download_url": u})
}

// SetBill makes the API serve text (WechatBillText) as the merchant's trade bill of day;
// STATEMENT_CREATING until ready when text is nil.
func (a *WechatAPI) SetBill(day string, text []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.bills[day] = text
}

// StreamBill makes the API serve the text gen writes as the merchant's trade bill of day,
// generated and gzipped as it downloads (a day of millions of rows, never held), with a
// hash_value computed now over what hashed writes (gen's own text when hashed is nil; another
// text: a transfer corrupted at the end). Computed here, not in the query, so that the query
// answers at once however large the day.
func (a *WechatAPI) StreamBill(day string, gen, hashed func(io.Writer) error) error {
	if hashed == nil {
		hashed = gen
	}
	hash := sha1.New()
	if err := hashed(hash); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.streamed[day] = streamedBill{gen: gen, hash: hash.Sum(nil)}
	return nil
}

type streamedBill struct {
	gen  func(io.Writer) error
	hash []byte
}

// serveBill answers 申请交易账单 (GET /v3/bill/tradebill) and 下载账单 (its download_url).
func (a *WechatAPI) serveBill(w http.ResponseWriter, r *http.Request, refuse func(code int, errCode, msg string)) {
	if r.URL.Path == "/v3/billdownload/file" {
		a.mu.Lock()
		d, ok := a.downloads[r.URL.Query().Get("token")]
		a.mu.Unlock()
		serveDownload(w, d, ok, "application/octet-stream") // not signed: checked against hash_value
		return
	}
	q := r.URL.Query()
	if _, err := time.Parse(time.DateOnly, q.Get("bill_date")); err != nil || q.Get("bill_type") != "ALL" || q.Get("tar_type") != "GZIP" {
		refuse(http.StatusBadRequest, "PARAM_ERROR", "参数错误")
		return
	}
	a.mu.Lock()
	text, ok := a.bills[q.Get("bill_date")]
	sb, streamed := a.streamed[q.Get("bill_date")]
	a.mu.Unlock()
	if streamed {
		id := token()
		a.mu.Lock()
		a.downloads[id] = download{gen: sb.gen, expires: time.Now().Add(5 * time.Minute)}
		a.mu.Unlock()
		a.answer(w, http.StatusOK, map[string]any{"hash_type": "SHA1", "hash_value": hex.EncodeToString(sb.hash),
			"download_url": a.URL + "/v3/billdownload/file?token=" + id})
		return
	}
	switch {
	case !ok:
		refuse(http.StatusBadRequest, "NO_STATEMENT_EXIST", "账单文件不存在")
		return
	case text == nil:
		refuse(http.StatusBadRequest, "STATEMENT_CREATING", "账单生成中")
		return
	}
	sum := sha1.Sum(text)
	a.mu.Lock()
	if t, ok := a.tampered[q.Get("bill_date")]; ok {
		text = t
	}
	a.mu.Unlock()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(text)
	zw.Close()
	id := token()
	a.mu.Lock()
	a.downloads[id] = download{body: gz.Bytes(), expires: time.Now().Add(5 * time.Minute)}
	a.mu.Unlock()
	a.answer(w, http.StatusOK, map[string]any{"hash_type": "SHA1", "hash_value": hex.EncodeToString(sum[:]),
		"download_url": a.URL + "/v3/billdownload/file?token=" + id})
}

// TamperBill makes the API's download of day's bill serve other bytes than those its
// hash_value was computed over, as a corrupted transfer would.
func (a *WechatAPI) TamperBill(day string, served []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tampered[day] = served
}
