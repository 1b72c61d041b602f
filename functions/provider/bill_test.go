package provider_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/text/encoding/simplifiedchinese"

	"github.com/payrelay/payrelay/functions/provider"
	"github.com/payrelay/payrelay/functions/provider/providertest"
	"github.com/payrelay/payrelay/functions/relay"
)

// The bill query's request is signed over the documented string: the common parameters with
// method alipay.data.dataservice.bill.downloadurl.query and biz_content {"bill_date","bill_type"}.
func TestAlipayBillRequestSignContentVector(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC) // 10:00 in Shanghai
	params := provider.AlipayRequestParams("2021004100000001", "alipay.data.dataservice.bill.downloadurl.query",
		map[string]any{"bill_type": "trade", "bill_date": "2026-11-24"}, at)
	want := `app_id=2021004100000001&biz_content={"bill_date":"2026-11-24","bill_type":"trade"}&charset=utf-8&format=JSON` +
		`&method=alipay.data.dataservice.bill.downloadurl.query&sign_type=RSA2&timestamp=2026-11-25 10:00:00&version=1.0`
	if got := provider.AlipayRequestSignContent(params); got != want {
		t.Fatalf("sign content\n got %s\nwant %s", got, want)
	}
}

// WeChat Pay's bill query and its download are signed over "GET\n<path and query>\n<ts>\n<nonce>\n\n"
// (an empty body keeps its line).
func TestWechatBillRequestSignMessageVector(t *testing.T) {
	t.Parallel()
	path := provider.WechatTradeBillPath("2026-11-24")
	if path != "/v3/bill/tradebill?bill_date=2026-11-24&bill_type=ALL&tar_type=GZIP" {
		t.Fatalf("path %s", path)
	}
	got := string(provider.WechatRequestSignMessage("GET", path, "1764036000", "593BEC0C930BF1AFEB40B4A08C8FB242", nil))
	want := "GET\n/v3/bill/tradebill?bill_date=2026-11-24&bill_type=ALL&tar_type=GZIP\n1764036000\n593BEC0C930BF1AFEB40B4A08C8FB242\n\n"
	if got != want {
		t.Fatalf("message\n got %q\nwant %q", got, want)
	}
	dl := string(provider.WechatRequestSignMessage("GET", "/v3/billdownload/file?token=xxx", "1764036000", "n", nil))
	if dl != "GET\n/v3/billdownload/file?token=xxx\n1764036000\nn\n\n" {
		t.Fatalf("download message %q", dl)
	}
}

// A bill as Alipay documents it, written out by hand (not by the stand-in's builder).
const alipayBillLiteral = "#支付宝业务明细查询\r\n" +
	"#账号：[20881021778468810156]\r\n" +
	"#起始日期：[2026年11月24日 00:00:00]   终止日期：[2026年11月25日 00:00:00]\r\n" +
	"#-----------------------------------------业务明细列表----------------------------------------\r\n" +
	"支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注\r\n" +
	"2026112422001446881000000001\t,20261124-0001\t,交易\t,月卡\t,2026-11-24 19:59:40\t,2026-11-24 20:00:00\t,\t,\t,\t,\t,159****5620\t,648.00\t,648.00\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,\t,-3.89\t,0.00\t,\t\r\n" +
	"2026112422001446881000000001\t,20261124-0001\t,退款\t,月卡\t,2026-11-24 19:59:40\t,2026-11-24 21:00:05\t,\t,\t,\t,\t,159****5620\t,-10.00\t,-10.00\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,RF20261124-0001\t,0.06\t,0.00\t,\t\r\n" +
	"#-----------------------------------------业务明细列表结束------------------------------------\r\n" +
	"#交易合计：1笔，商家实收共：￥648.00元，商家实收退款共：￥-10.00元，支付宝红包共：￥0.00元\r\n" +
	"#退款合计：1笔，商家实收退款共：￥-10.00元\r\n" +
	"#导出时间：[2026年11月25日 09:12:34]\r\n"

func TestParseAlipayBill(t *testing.T) {
	t.Parallel()
	cst := time.FixedZone("CST", 8*3600)
	empty := providertest.AlipayBillCSV("2088102177846881", "2026-11-23", nil)
	cases := []struct {
		name    string
		text    string
		want    []provider.AlipayBillRow
		wantErr string
	}{
		{name: "documented layout, GBK, a trade and its refund", text: alipayBillLiteral, want: []provider.AlipayBillRow{
			{TradeNo: "2026112422001446881000000001", OutTradeNo: "20261124-0001", Kind: "交易", FinishedAt: time.Date(2026, 11, 24, 20, 0, 0, 0, cst), AmountMinor: 64800},
			{TradeNo: "2026112422001446881000000001", OutTradeNo: "20261124-0001", Kind: "退款", FinishedAt: time.Date(2026, 11, 24, 21, 0, 5, 0, cst), AmountMinor: 1000, RefundNo: "RF20261124-0001"},
		}},
		{name: "a quoted product name with a comma", text: strings.Replace(alipayBillLiteral, "\t,交易\t,月卡\t,", "\t,交易\t,\"月卡, 648元\",", 1), want: []provider.AlipayBillRow{
			{TradeNo: "2026112422001446881000000001", OutTradeNo: "20261124-0001", Kind: "交易", FinishedAt: time.Date(2026, 11, 24, 20, 0, 0, 0, cst), AmountMinor: 64800},
			{TradeNo: "2026112422001446881000000001", OutTradeNo: "20261124-0001", Kind: "退款", FinishedAt: time.Date(2026, 11, 24, 21, 0, 5, 0, cst), AmountMinor: 1000, RefundNo: "RF20261124-0001"},
		}},
		{name: "an empty day", text: empty},
		{name: "truncated before the summary", text: alipayBillLiteral[:strings.Index(alipayBillLiteral, "#----------------------------------------"+"-业务明细列表结束")], wantErr: "truncated"},
		{name: "a row lost", text: strings.Replace(alipayBillLiteral, "#交易合计：1笔", "#交易合计：2笔", 1), wantErr: "summary counts 2 trades"},
		{name: "no header", text: "#支付宝业务明细查询\r\n", wantErr: "no header"},
		{name: "a column missing", text: strings.Replace(alipayBillLiteral, "完成时间", "时间", 1), wantErr: "lacks column 完成时间"},
		{name: "a bad time", text: strings.Replace(alipayBillLiteral, "2026-11-24 20:00:00", "24/11/2026", 1), wantErr: "完成时间"},
		{name: "a bad amount", text: strings.Replace(alipayBillLiteral, "648.00\t,648.00", "6.4.8\t,648.00", 1), wantErr: "订单金额"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := provider.ParseAlipayBill(providertest.GBK(c.text))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got.Rows); diff != "" {
				t.Errorf("rows (-want +got):\n%s", diff)
			}
		})
	}
	// The literal is GBK on the wire: read as UTF-8 it is not the same text.
	if _, err := provider.ParseAlipayBill([]byte{0xff, 0xfe, 0x00}); err == nil {
		t.Error("bytes that are not GBK text were read")
	}
}

func TestReadAlipayBillZip(t *testing.T) {
	t.Parallel()
	lines := []providertest.AlipayBillLine{{TradeNo: "2026112422001", OutTradeNo: "o-1", Kind: "交易", Finished: "2026-11-24 20:00:00", Amount: "6.48"}}
	detail, err := provider.OpenAlipayBillZip(bytes.NewReader(providertest.AlipayBillZip("2088102177846881", "2026-11-24", lines)))
	if err != nil {
		t.Fatal(err)
	}
	text, err := io.ReadAll(detail)
	if err != nil {
		t.Fatal(err)
	}
	bill, err := provider.ParseAlipayBill(text)
	if err != nil || len(bill.Rows) != 1 || bill.Rows[0].AmountMinor != 648 || bill.Account != "20881021778468810156" || bill.PID != "2088102177846881" {
		t.Fatalf("%+v %v", bill, err)
	}
	// The account line as Alipay writes it (PID and a four-digit suffix), and bare (older bills).
	for line, pid := range map[string]string{"#账号：[20881021778468810156]": "2088102177846881", "#账号：[2088102177846881]": "2088102177846881",
		"#账号:[20881021778468810156]": "2088102177846881", "#账号：[studio@example.com]": "", "#账号：[208810217784688101]": ""} {
		b, err := provider.ParseAlipayBill(providertest.GBK(strings.Replace(alipayBillLiteral, "#账号：[20881021778468810156]", line, 1)))
		if err != nil || b.PID != pid {
			t.Errorf("%s: PID %q, %v; want %q", line, b.PID, err, pid)
		}
	}
	if _, err := provider.OpenAlipayBillZip(strings.NewReader("PK not a zip")); err == nil {
		t.Error("garbage read as a zip")
	}
}

// A WeChat Pay bill as documented, by hand: header, backtick fields (a comma inside the
// product name), CRLF, summary.
// The early layout (总金额, 代金券或立减优惠金额, no 订单金额 nor 申请退款金额), as merchants who
// never switched still download it.
const wechatEarlyBillLiteral = "交易时间,公众账号ID,商户号,子商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,总金额,代金券或立减优惠金额,微信退款单号,商户退款单号,退款金额,代金券或立减优惠退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率\r\n" +
	"`2026-11-24 20:00:00,`wxd678efh567hg6787,`1900000109,`0,`,`4200000001202611240000000001,`wx-0001,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`OTHERS,`CNY,`6.48,`0.00,`0,`0,`0.00,`0.00,`,`,`月卡,`,`0.04000,`0.60%\r\n" +
	"`2026-11-24 21:00:00,`wxd678efh567hg6787,`1900000109,`0,`,`4200000001202611240000000001,`wx-0001,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`REFUND,`OTHERS,`CNY,`6.48,`0.00,`50300000012026112400000000001,`RF-0001,`1.48,`0.00,`ORIGINAL,`SUCCESS,`月卡,`,`-0.01000,`0.60%\r\n" +
	"总交易单数,总交易额,总退款金额,总代金券或立减优惠退款金额,手续费总金额\r\n" +
	"`2,`6.48,`1.48,`0.00,`0.03000\r\n"

const wechatBillLiteral = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n" +
	"`2026-11-24 20:00:00,`wxd678efh567hg6787,`1900000109,`0,`,`4200000001202611240000000001,`wx-0001,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`OTHERS,`CNY,`6.48,`0.00,`0,`0,`0.00,`0.00,`,`,`月卡, 648元,`,`0.04000,`0.60%,`6.48,`0.00,`\r\n" +
	"`2026-11-24 21:00:00,`wxd678efh567hg6787,`1900000109,`0,`,`4200000001202611240000000001,`wx-0001,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300000012026112400000000001,`RF-0001,`1.48,`0.00,`ORIGINAL,`SUCCESS,`月卡, 648元,`,`-0.01000,`0.60%,`6.48,`1.48,`\r\n" +
	"总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n" +
	"`2,`6.48,`1.48,`0.00,`0.03000,`6.48,`1.48\r\n"

func TestParseWechatBill(t *testing.T) {
	t.Parallel()
	cst := time.FixedZone("CST", 8*3600)
	cases := []struct {
		name    string
		text    string
		layout  string
		want    []provider.WechatBillRow
		wantErr string
		problem string // the second row cannot be placed, saying this; the day reads on
	}{
		{name: "documented layout", text: wechatBillLiteral, layout: "current", want: []provider.WechatBillRow{
			{At: time.Date(2026, 11, 24, 20, 0, 0, 0, cst), AppID: "wxd678efh567hg6787", MchID: "1900000109", TransactionID: "4200000001202611240000000001",
				OutTradeNo: "wx-0001", State: "SUCCESS", Currency: "CNY", TotalMinor: 648, RefundID: "0", OutRefundNo: "0", Line: 2},
			{At: time.Date(2026, 11, 24, 21, 0, 0, 0, cst), AppID: "wxd678efh567hg6787", MchID: "1900000109", TransactionID: "4200000001202611240000000001",
				OutTradeNo: "wx-0001", State: "REFUND", Currency: "CNY", TotalMinor: 648, RefundID: "50300000012026112400000000001", OutRefundNo: "RF-0001",
				RefundMinor: 148, SettlementRefundMinor: 148, RefundState: "SUCCESS", Line: 3},
		}},
		// A 免充值 coupon of 0.48 on the refund: 申请退款金额 1.48 (what the notification says),
		// 退款金额 1.00 (the settlement).
		{name: "a coupon-reduced refund", layout: "current", text: strings.Replace(wechatBillLiteral, "`RF-0001,`1.48,`0.00,`ORIGINAL", "`RF-0001,`1.00,`0.00,`ORIGINAL", 1), want: []provider.WechatBillRow{
			{At: time.Date(2026, 11, 24, 20, 0, 0, 0, cst), AppID: "wxd678efh567hg6787", MchID: "1900000109", TransactionID: "4200000001202611240000000001",
				OutTradeNo: "wx-0001", State: "SUCCESS", Currency: "CNY", TotalMinor: 648, RefundID: "0", OutRefundNo: "0", Line: 2},
			{At: time.Date(2026, 11, 24, 21, 0, 0, 0, cst), AppID: "wxd678efh567hg6787", MchID: "1900000109", TransactionID: "4200000001202611240000000001",
				OutTradeNo: "wx-0001", State: "REFUND", Currency: "CNY", TotalMinor: 648, RefundID: "50300000012026112400000000001", OutRefundNo: "RF-0001",
				RefundMinor: 148, SettlementRefundMinor: 100, RefundState: "SUCCESS", Line: 3},
		}},
		{name: "the early layout", text: wechatEarlyBillLiteral, layout: "early", want: []provider.WechatBillRow{
			{At: time.Date(2026, 11, 24, 20, 0, 0, 0, cst), AppID: "wxd678efh567hg6787", MchID: "1900000109", TransactionID: "4200000001202611240000000001",
				OutTradeNo: "wx-0001", State: "SUCCESS", Currency: "CNY", TotalMinor: 648, RefundID: "0", OutRefundNo: "0", Line: 2},
			{At: time.Date(2026, 11, 24, 21, 0, 0, 0, cst), AppID: "wxd678efh567hg6787", MchID: "1900000109", TransactionID: "4200000001202611240000000001",
				OutTradeNo: "wx-0001", State: "REFUND", Currency: "CNY", TotalMinor: 648, RefundID: "50300000012026112400000000001", OutRefundNo: "RF-0001",
				RefundMinor: 148, SettlementRefundMinor: 148, RefundState: "SUCCESS", Line: 3},
		}},
		{name: "an empty day", layout: "current", text: string(providertest.WechatBillText(nil))},
		{name: "truncated before the summary", text: wechatBillLiteral[:strings.Index(wechatBillLiteral, "总交易单数")], wantErr: "truncated"},
		{name: "a row lost", text: strings.Replace(wechatBillLiteral, "`2,`6.48", "`3,`6.48", 1), wantErr: "summary counts 3 rows"},
		{name: "a column missing", text: strings.Replace(wechatBillLiteral, "微信退款单号", "退款单号", 1), wantErr: "lacks column 微信退款单号"},
		{name: "neither 订单金额 nor 总金额", text: strings.Replace(wechatBillLiteral, ",订单金额,", ",金额,", 1), wantErr: "lacks column 订单金额"},
		{name: "not UTF-8", text: string(providertest.GBK(wechatBillLiteral)), wantErr: "UTF-8"},
		{name: "a row without backticks", text: strings.Replace(wechatBillLiteral, "`2026-11-24 21:00:00,`", "2026-11-24 21:00:00,", 1), problem: "backtick"},
		{name: "a bad amount", text: strings.Replace(wechatBillLiteral, "`1.48,`", "`1.485,`", 1), problem: "退款金额"},
		{name: "a bad time", text: strings.Replace(wechatBillLiteral, "2026-11-24 21:00:00", "2026/11/24 21:00", 1), problem: "交易时间"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := provider.ParseWechatBill([]byte(c.text))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.problem != "" {
				if len(got.Rows) != 2 || got.Rows[0].Problem != "" || got.Rows[0].TotalMinor != 648 || !strings.Contains(got.Rows[1].Problem, c.problem) || got.Rows[1].Line != 3 {
					t.Fatalf("rows %+v; want the first read and the second's problem saying %q", got.Rows, c.problem)
				}
				return
			}
			if diff := cmp.Diff(c.want, got.Rows); diff != "" || got.Layout != c.layout {
				t.Errorf("layout %q (want %q), rows (-want +got):\n%s", got.Layout, c.layout, diff)
			}
		})
	}
}

func FuzzParseAlipayBill(f *testing.F) {
	f.Add(providertest.GBK(alipayBillLiteral))
	f.Add(providertest.GBK(providertest.AlipayBillCSV("2088102177846881", "2026-11-24", nil)))
	f.Fuzz(func(t *testing.T, b []byte) {
		bill, err := provider.ParseAlipayBill(b)
		if err != nil {
			return
		}
		for _, r := range bill.Rows {
			if r.AmountMinor <= 0 || r.FinishedAt.IsZero() {
				t.Fatalf("a row read without its amount or time: %+v", r)
			}
		}
	})
}

func FuzzParseWechatBill(f *testing.F) {
	f.Add([]byte(wechatBillLiteral))
	f.Add([]byte(wechatEarlyBillLiteral))
	f.Add(providertest.WechatBillText(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		bill, err := provider.ParseWechatBill(b)
		if err != nil {
			return
		}
		for _, r := range bill.Rows {
			if r.Problem != "" {
				continue
			}
			if r.TotalMinor < 0 || r.RefundMinor < 0 || r.SettlementRefundMinor < 0 || r.At.IsZero() {
				t.Fatalf("a row read with a negative amount or no time: %+v", r)
			}
		}
	})
}

// Bill downloads through the stand-ins, which check our signatures as the providers do.
func TestAlipayBillThroughTheGateway(t *testing.T) {
	t.Parallel()
	f := newQueryFixture(t, nil)
	ctx := context.Background()
	f.gw.SetBill("2026-11-24", providertest.AlipayBillZip("2088102177846881", "2026-11-24", []providertest.AlipayBillLine{
		{TradeNo: "2026112422001", OutTradeNo: "o-1", Kind: "交易", Finished: "2026-11-24 20:00:00", Amount: "6.48"},
		{TradeNo: "2026112422001", OutTradeNo: "o-1", Kind: "退款", Finished: "2026-11-24 21:00:00", Amount: "1.48", RefundNo: "rf-1"},
		{TradeNo: "2026112422002", OutTradeNo: "o-2", Kind: "退款", Finished: "2026-11-24 21:00:00", Amount: "1.00"}, // no request number
	}))
	bill, err := f.ali.Bill(ctx, providertest.AlipayAppID, "2026-11-24")
	if err != nil {
		t.Fatal(err)
	}
	entries, unreadable, _, err := readBill(bill)
	if err != nil || len(entries) != 2 || len(unreadable) != 1 {
		t.Fatalf("entries %+v, unreadable %+v, %v", entries, unreadable, err)
	}
	pay, ref := entries[0], entries[1]
	if pay.Type != relay.TypePaymentSucceeded || pay.Payment.OrderID != "o-1" || pay.Payment.AmountMinor != 648 || pay.Payment.Game != "sword" ||
		pay.Payment.TransactionID != "2026112422001" || !pay.Payment.PaidAt.Equal(time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("payment entry %+v", pay)
	}
	if ref.Type != relay.TypePaymentRefunded || ref.Refund.ID != "rf-1" || ref.Refund.AmountMinor != 148 {
		t.Errorf("refund entry %+v %+v", ref, ref.Refund)
	}
	if u := unreadable[0]; u.OrderID != "o-2" || u.Kind != relay.FindingUnrelayable {
		t.Errorf("unreadable %+v", u)
	}
	// No bill that day: an empty day, not an error.
	if b, err := f.ali.Bill(ctx, providertest.AlipayAppID, "2026-11-20"); err != nil || b.Rows != nil {
		t.Errorf("a day without a bill: %+v %v", b, err)
	}
	if _, refused := f.gw.Counts(); refused != 0 {
		t.Errorf("the gateway refused %d of our requests", refused)
	}
	// The bill's PID is checked against the app's seller_id: the configured account's bill is
	// read, another account's refused whole.
	for seller, ok := range map[string]bool{"2088102177846881": true, "2088999999999999": false} {
		a, err := provider.NewAlipay([]provider.AlipayApp{{AppID: providertest.AlipayAppID, PublicKey: providertest.PublicKeyPEM(f.alipayKey), SellerID: seller,
			PrivateKey: providertest.PrivateKeyPEM(f.appKey), Gateway: f.gw.URL, Game: "sword"}})
		if err != nil {
			t.Fatal(err)
		}
		b, err := a.Bill(ctx, providertest.AlipayAppID, "2026-11-24")
		if err == nil {
			_, _, _, err = readBill(b)
		}
		var qe *provider.QueryError
		if ok && err != nil || !ok && (!errors.As(err, &qe) || !strings.Contains(err.Error(), "seller_id")) {
			t.Errorf("seller_id %s: %v; want accepted %v", seller, err, ok)
		}
	}
	// An answer signed with another key is not believed.
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	forged := newQueryFixture(t, other)
	forged.gw.SetBill("2026-11-24", providertest.AlipayBillZip("2088102177846881", "2026-11-24", nil))
	var qe *provider.QueryError
	if _, err := forged.ali.Bill(ctx, providertest.AlipayAppID, "2026-11-24"); !errors.As(err, &qe) || !strings.Contains(err.Error(), "signature") {
		t.Errorf("a forged answer: %v", err)
	}
}

// readBill reads a bill's rows back: its entries, unreadable rows and pending refunds, and
// the error its stream ended with.
func readBill(b relay.Bill) (entries []relay.Result, unreadable []relay.Finding, pending []relay.PendingRefund, err error) {
	if b.Rows == nil {
		return nil, nil, nil, nil
	}
	err = b.Rows(func(r relay.BillRow) error {
		switch {
		case r.Entry != nil:
			entries = append(entries, *r.Entry)
		case r.Unreadable != nil:
			unreadable = append(unreadable, *r.Unreadable)
		case r.Pending != nil:
			pending = append(pending, *r.Pending)
		}
		return nil
	})
	return entries, unreadable, pending, err
}

func TestWechatBillThroughTheAPI(t *testing.T) {
	t.Parallel()
	wp, api := newWechatBillFixture(t)
	ctx := context.Background()
	api.SetBill("2026-11-24", providertest.WechatBillText([]providertest.WechatBillLine{
		{At: "2026-11-24 20:00:00", AppID: providertest.WechatAppID, MchID: providertest.WechatMchID, TransactionID: "42000001", OutTradeNo: "wx-1", State: "SUCCESS", Total: "6.48"},
		{At: "2026-11-24 21:00:00", AppID: providertest.WechatAppID, MchID: providertest.WechatMchID, TransactionID: "42000001", OutTradeNo: "wx-1", State: "REFUND", Total: "6.48",
			RefundID: "50300001", OutRefundNo: "RF-1", Refund: "1.48", RefundState: "SUCCESS"},
		{At: "2026-11-24 22:00:00", AppID: providertest.WechatAppID, MchID: providertest.WechatMchID, TransactionID: "42000002", OutTradeNo: "wx-2", State: "REFUND", Total: "6.48",
			RefundID: "50300002", OutRefundNo: "RF-2", Refund: "1.00", RefundState: "PROCESSING"},
		{At: "2026-11-24 23:00:00", AppID: "wx-unrouted-app", MchID: providertest.WechatMchID, TransactionID: "42000003", OutTradeNo: "wx-3", State: "SUCCESS", Total: "1.00"},
	}))
	bill, err := wp.Bill(ctx, providertest.WechatMchID, "2026-11-24")
	if err != nil {
		t.Fatal(err)
	}
	entries, unreadable, pending, err := readBill(bill)
	if err != nil || len(entries) != 2 || len(unreadable) != 1 || len(pending) != 1 {
		t.Fatalf("entries %+v, unreadable %+v, pending %+v, %v", entries, unreadable, pending, err)
	}
	if pr := pending[0]; pr.OrderID != "wx-2" || pr.RefundID != "50300002" || pr.RefundNo != "RF-2" || pr.AmountMinor != 100 || pr.State != "PROCESSING" {
		t.Errorf("pending refund %+v", pr)
	}
	if e := entries[0]; e.Type != relay.TypePaymentSucceeded || e.Payment.AmountMinor != 648 || e.Payment.Game != "sword" || e.Payment.AppID != providertest.WechatAppID {
		t.Errorf("payment entry %+v", e)
	}
	if e := entries[1]; e.Type != relay.TypePaymentRefunded || e.Refund.ID != "50300001" || e.Refund.AmountMinor != 148 || e.Refund.MerchantRefundNo != "RF-1" {
		t.Errorf("refund entry %+v", e.Refund)
	}
	if u := unreadable; !strings.Contains(u[0].Reason, "maps to no game") {
		t.Errorf("unreadable %+v", u)
	}
	// No statement: an empty day. Being made: not ready. Tampered in transit: refused.
	if b, err := wp.Bill(ctx, providertest.WechatMchID, "2026-11-20"); err != nil || b.Rows != nil {
		t.Errorf("NO_STATEMENT_EXIST: %+v %v", b, err)
	}
	api.SetBill("2026-11-25", nil)
	if _, err := wp.Bill(ctx, providertest.WechatMchID, "2026-11-25"); !errors.Is(err, provider.ErrBillNotReady) {
		t.Errorf("STATEMENT_CREATING: %v", err)
	}
	api.SetBill("2026-11-26", providertest.WechatBillText(nil))
	api.TamperBill("2026-11-26", providertest.WechatBillText([]providertest.WechatBillLine{{At: "2026-11-26 20:00:00", AppID: providertest.WechatAppID,
		MchID: providertest.WechatMchID, TransactionID: "4200009", OutTradeNo: "wx-9", State: "SUCCESS", Total: "648.00"}}))
	var qe *provider.QueryError
	tampered, err := wp.Bill(ctx, providertest.WechatMchID, "2026-11-26")
	if err == nil {
		_, _, _, err = readBill(tampered) // its rows are read, and the hash checked at the end
	}
	if !errors.As(err, &qe) || !strings.Contains(err.Error(), "SHA1") {
		t.Errorf("a tampered bill: %v", err)
	}
	if _, refused := api.Counts(); refused != 0 {
		t.Errorf("the API refused %d of our signed requests", refused)
	}
}

func newWechatBillFixture(t *testing.T) (*provider.WechatPay, *providertest.WechatAPI) {
	t.Helper()
	plat, _ := rsa.GenerateKey(rand.Reader, 2048)
	apiKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	api := providertest.NewWechatAPI(providertest.WechatMchID, "API-SERIAL", &apiKey.PublicKey, plat, providertest.WechatSerial)
	t.Cleanup(api.Close)
	wp, err := provider.NewWechatPay([]provider.WechatPayMerchant{{MchID: providertest.WechatMchID, APIv3Key: providertest.APIv3Key,
		AppIDs: map[string]string{providertest.WechatAppID: "sword"}, PlatformKeys: map[string]string{providertest.WechatSerial: providertest.PublicKeyPEM(plat)},
		APIPrivateKey: providertest.PrivateKeyPEM(apiKey), APISerial: "API-SERIAL", APIBase: api.URL}})
	if err != nil {
		t.Fatal(err)
	}
	return wp, api
}

// A day of 10,000 rows, and the floor to read it against: decoding the same bytes and
// splitting them into fields with encoding/csv, nothing checked or converted.
func benchAlipayBill() []byte {
	var lines []providertest.AlipayBillLine
	for i := range 10000 {
		lines = append(lines, providertest.AlipayBillLine{TradeNo: fmt.Sprintf("20261124220014468810%08d", i), OutTradeNo: fmt.Sprintf("o-%d", i),
			Kind: "交易", Finished: "2026-11-24 20:00:00", Amount: "648.00"})
	}
	return providertest.GBK(providertest.AlipayBillCSV("2088102177846881", "2026-11-24", lines))
}

func BenchmarkParseAlipayBill10k(b *testing.B) {
	gbk := benchAlipayBill()
	b.SetBytes(int64(len(gbk)))
	b.ReportAllocs()
	for b.Loop() {
		if bill, err := provider.ParseAlipayBill(gbk); err != nil || len(bill.Rows) != 10000 {
			b.Fatal(err)
		}
	}
}

func BenchmarkAlipayBillBaseline10k(b *testing.B) {
	gbk := benchAlipayBill()
	b.SetBytes(int64(len(gbk)))
	b.ReportAllocs()
	for b.Loop() {
		text, _ := simplifiedchinese.GB18030.NewDecoder().Bytes(gbk)
		r := csv.NewReader(bytes.NewReader(text))
		r.FieldsPerRecord, r.LazyQuotes, r.Comment = -1, true, '#'
		if rows, err := r.ReadAll(); err != nil || len(rows) != 10001 {
			b.Fatal(len(rows), err)
		}
	}
}

func benchWechatBill() []byte {
	var lines []providertest.WechatBillLine
	for i := range 10000 {
		lines = append(lines, providertest.WechatBillLine{At: "2026-11-24 20:00:00", AppID: providertest.WechatAppID, MchID: providertest.WechatMchID,
			TransactionID: fmt.Sprintf("42000012342026112400%08d", i), OutTradeNo: fmt.Sprintf("wx-%d", i), State: "SUCCESS", Total: "6.48"})
	}
	return providertest.WechatBillText(lines)
}

func BenchmarkParseWechatBill10k(b *testing.B) {
	text := benchWechatBill()
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		if bill, err := provider.ParseWechatBill(text); err != nil || len(bill.Rows) != 10000 {
			b.Fatal(err)
		}
	}
}

func BenchmarkWechatBillBaseline10k(b *testing.B) {
	text := benchWechatBill()
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		for _, line := range strings.Split(string(text), "\n") {
			n += len(strings.Split(line, ",`"))
		}
		if n == 0 {
			b.Fatal("nothing split")
		}
	}
}

// A bill that inflates past MaxInflation times its packed size is refused as it unpacks,
// however small it is packed (a zip bomb): Alipay's zip and WeChat Pay's gzip; and a single line
// past MaxBillLine is refused.
func TestBillBombsAndLongLinesAreRefused(t *testing.T) {
	t.Parallel()
	const size = 8 << 20
	var zipped bytes.Buffer
	zw := zip.NewWriter(&zipped)
	f, err := zw.CreateHeader(&zip.FileHeader{Name: "2088102177846881_20261124_业务明细.csv", Method: zip.Deflate})
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, size))
	zw.Close()
	if zipped.Len() > size/500 {
		t.Fatalf("the zip is %d bytes: not a bomb", zipped.Len())
	}
	detail, err := provider.OpenAlipayBillZip(bytes.NewReader(zipped.Bytes()))
	if err == nil {
		_, err = io.Copy(io.Discard, detail)
	}
	if !errors.Is(err, provider.ErrInflation) {
		t.Errorf("Alipay: a zip of %d bytes inflating to %d: %v, want ErrInflation", zipped.Len(), size, err)
	}
	// A real bill packs far below the ratio and reads whole.
	big := make([]providertest.AlipayBillLine, 2000)
	for i := range big {
		big[i] = providertest.AlipayBillLine{TradeNo: fmt.Sprintf("20261124220014468810%08d", i), OutTradeNo: fmt.Sprintf("o-%d", i), Kind: "交易", Finished: "2026-11-24 20:00:00", Amount: "6.48"}
	}
	detail, err = provider.OpenAlipayBillZip(bytes.NewReader(providertest.AlipayBillZip("2088102177846881", "2026-11-24", big)))
	if err == nil {
		var b provider.AlipayBill
		b, err = provider.ReadAlipayBill(detail, func(*provider.AlipayBill, provider.AlipayBillRow) error { return nil })
		_ = b
	}
	if err != nil {
		t.Errorf("Alipay: a 2,000-row bill: %v", err)
	}

	wp, api := newWechatBillFixture(t)
	api.SetBill("2026-11-24", providertest.WechatBillText(nil))
	api.TamperBill("2026-11-24", bytes.Repeat([]byte("\n"), size))
	bill, err := wp.Bill(context.Background(), providertest.WechatMchID, "2026-11-24")
	if err == nil {
		_, _, _, err = readBill(bill)
	}
	if err == nil || !strings.Contains(err.Error(), "zip bomb") {
		t.Errorf("WeChat Pay: a gzip inflating to %d: %v", size, err)
	}
	// One line past the bound, in an otherwise well-formed bill.
	long := strings.Replace(wechatBillLiteral, "`月卡, 648元,", "`"+strings.Repeat("卡", provider.MaxBillLine)+",", 1)
	if _, err := provider.ParseWechatBill([]byte(long)); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("a line over MaxBillLine: %v", err)
	}
}
