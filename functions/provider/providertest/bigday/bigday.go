// Package bigday writes a large day's bills in the providers' layouts as they are read, a row
// at a time (a day of millions of rows is never held), for the scale tests and benchmarks of
// reconciliation. It imports nothing of package provider, so provider's own tests use it too.
// The rows are payments of 6.48 CNY at 20:00 Beijing time with order ids prefix-000000000 on,
// as relaytest.SyntheticDay holds them.
package bigday

import (
	"archive/zip"
	"bufio"
	"fmt"
	"io"
	"time"

	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/transform"
)

// The WeChat Pay merchant and app the bills are of (providertest's).
const (
	WechatMchID = "1900000109"
	WechatAppID = "wxd678efh567hg6787"
)

// WriteWechat writes a WeChat Pay ALL bill (current layout, unpacked, as hash_value is
// computed) of n payments of 6.48 CNY paid at 20:00 on day, order ids prefix-000000000 on (as
// relaytest.SyntheticDay holds them), a row at a time: a day of millions is never held. amount,
// when set, may give row i another amount (yuan; "" keeps 6.48).
func WriteWechat(w io.Writer, day, prefix string, n int, amount func(i int) string) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteString("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n")
	for i := range n {
		a := "6.48"
		if amount != nil {
			if x := amount(i); x != "" {
				a = x
			}
		}
		fmt.Fprintf(bw, "`%s 20:00:00,`%s,`%s,`0,`,`42000012342026112%011d,`%s-%09d,`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`JSAPI,`SUCCESS,`OTHERS,`CNY,`%s,`0.00,`0,`0,`0.00,`0.00,`,`,`月卡 648元,`,`0.04000,`0.60%%,`%s,`0.00,`\r\n",
			day, WechatAppID, WechatMchID, i, prefix, i, a, a)
	}
	bw.WriteString("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n")
	fmt.Fprintf(bw, "`%d,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\r\n", n)
	return bw.Flush()
}

// WriteAlipayZip writes an Alipay trade bill's zip (its detail CSV in GBK) of n payments of
// 6.48 CNY finished at 20:00 on day, order ids prefix-000000000 on, a row at a time.
func WriteAlipayZip(w io.Writer, day, prefix string, n int) error {
	d, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return err
	}
	zw := zip.NewWriter(w)
	f, err := zw.CreateHeader(&zip.FileHeader{Name: "2088102177846881_" + d.Format("20060102") + "_业务明细.csv", Method: zip.Deflate})
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(transform.NewWriter(f, simplifiedchinese.GB18030.NewEncoder()), 64<<10)
	fmt.Fprintf(bw, "#支付宝业务明细查询\n#账号：[20881021778468810156]\n#起始日期：[%s 00:00:00]   终止日期：[%s 00:00:00]\n",
		d.Format("2006年01月02日"), d.AddDate(0, 0, 1).Format("2006年01月02日"))
	bw.WriteString("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注\n")
	for i := range n {
		fmt.Fprintf(bw, "%s22001446881%09d\t,%s-%09d\t,交易\t,月卡\t,%s 19:59:40\t,%s 20:00:00\t,\t,\t,\t,\t,159****5620\t,6.48\t,6.48\t,0.00\t,0.00\t,0.00\t,0.00\t,0.00\t,\t,0.00\t,0.00\t,\t,-0.04\t,0.00\t,\t\n",
			d.Format("20060102"), i, prefix, i, day, day)
	}
	bw.WriteString("#-----------------------------------------业务明细列表结束------------------------------------\n")
	fmt.Fprintf(bw, "#交易合计：%d笔，商家实收共：￥0.00元\n#退款合计：0笔，商家实收退款共：￥0.00元\n", n)
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}
