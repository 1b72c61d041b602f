package provider

// SetBillTextLimit lowers what wp lets a bill inflate to (MaxBillText), so that a test reaches
// the bound without unpacking 64 MiB under the race detector.
func SetBillTextLimit(wp *WechatPay, n int) { wp.billText = n }
