package relay

import (
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
)

// Money. Every amount payrelay stores, compares and relays (amount_minor in the game server's
// payload) is an integer in the currency's ISO 4217 minor unit: cents of USD, yen of JPY, fils
// (1/1000) of KWD, whole krónur of ISK. Providers write amounts in representations of their
// own, each converted here, exactly, or refused:
//
//	representation                         exponent of its integer      read by
//	decimal string in major units          (any, up to ISO's)           ParseAmount: Alipay, WeChat Pay bills, the generic format
//	WeChat Pay's fen                       2 (CNY only)                 the integer as it is
//	the App Store's price in milliunits    3, every currency            FromMilli
//	Stripe's "smallest currency unit"      StripeExponent (below)       FromStripe
//
// A value that does not convert to a whole number of ISO minor units (a Stripe ISK amount
// not divisible by 100, 1.5 yen in milliunits) is refused with an *InexactAmount, which Ingest
// answers 422 and alerts on: never rounded, since a rounded amount is money misstated.

// isoExponent is ISO 4217's minor unit of each active currency (List One, the 2025 edition:
// XCG replaced ANG, which stays readable for old payments; SLE replaced SLL; VED and VES are
// both current). Funds codes (BOV, CLF, COU, MXV, USN, UYI, UYW, CHE, CHW) are not payment
// currencies and are absent.
var isoExponent = func() map[string]int {
	m := map[string]int{}
	two := "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD " +
		"CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD " +
		"GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL " +
		"MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK " +
		"PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB " +
		"TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG"
	zero := "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
	three := "BHD IQD JOD KWD LYD OMR TND"
	for _, c := range strings.Fields(two) {
		m[c] = 2
	}
	for _, c := range strings.Fields(zero) {
		m[c] = 0
	}
	for _, c := range strings.Fields(three) {
		m[c] = 3
	}
	return m
}()

// Stripe's representation (Stripe's "Supported currencies" document, docs.stripe.com/currencies,
// read 2026-12: "Minor units in API amounts", "Zero-decimal currencies", "Three-decimal
// currencies", "Special cases"): every presentment currency is two-decimal unless listed.
//   - Zero-decimal: the amount is in major units. The list includes MGA, which ISO gives two
//     decimals (5000 in a Stripe MGA event is 5000 ariary, 500000 ISO minor units), and UGX,
//     which ISO gives none. Reading taken for UGX: the zero-decimal list, where Stripe names it,
//     over the two-decimal backward-compatibility sentence of older versions of the page (the
//     special-cases row that remains concerns payouts).
//   - Three-decimal: BHD JOD KWD OMR TND, as ISO (Stripe asks that the last digit be 0; it is
//     read as sent). IQD and LYD, three-decimal in ISO, are not Stripe currencies: refused.
//   - Special cases: ISK "has transitioned to a zero-decimal currency, but backwards
//     compatibility requires you to represent it as a two-decimal value, where the decimal
//     amount is always 00" (Stripe support, "Deprecation of fractional ISK charges and
//     refunds", 2023-04-14: amounts must be divisible by 100): 500 is 5 krónur, 5 ISO minor
//     units, and 550 is refused. HUF and TWD are two-decimal for charges and refunds, as ISO
//     (zero-decimal only for payouts, which payrelay does not read).
var (
	stripeZero    = setOf("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF")
	stripeThree   = setOf("BHD JOD KWD OMR TND")
	stripeSpecial = map[string]int{"ISK": 2, "HUF": 2, "TWD": 2}
)

func setOf(s string) map[string]bool {
	m := map[string]bool{}
	for _, c := range strings.Fields(s) {
		m[c] = true
	}
	return m
}

// CurrencyExponent is the number of decimals of currency's ISO 4217 minor unit, and whether
// the code is a known ISO 4217 currency.
func CurrencyExponent(currency string) (int, bool) {
	e, ok := isoExponent[currency]
	return e, ok
}

// StripeExponent is the number of decimals of Stripe's integer amounts in currency (upper
// case), and whether Stripe documents the currency.
func StripeExponent(currency string) (int, bool) {
	switch iso, ok := isoExponent[currency]; {
	case !ok:
		return 0, false
	case stripeZero[currency]:
		return 0, true
	case stripeThree[currency]:
		return 3, true
	case stripeSpecial[currency] != 0:
		return stripeSpecial[currency], true
	case iso == 2:
		return 2, true
	}
	return 0, false
}

// InexactAmount is an amount that is not a whole number of its currency's ISO minor units (or
// does not fit in them): refused, never rounded.
type InexactAmount struct {
	Amount   int64
	Exponent int // of Amount's integer
	Currency string
	Source   string // the representation, for the reason
}

func (e *InexactAmount) Error() string {
	iso, _ := CurrencyExponent(e.Currency)
	return fmt.Sprintf("amount: %s amount %d (%d decimals) is not a whole number of %s's ISO 4217 minor unit (%d decimals); refused, not rounded",
		e.Source, e.Amount, e.Exponent, e.Currency, iso)
}

// ToMinor converts amount, an integer in units of 10^-exp of currency, to ISO 4217 minor
// units, exactly: a FieldError for an unknown currency or a non-positive amount, an
// *InexactAmount when it is not whole or overflows.
func ToMinor(amount int64, exp int, currency, source string) (int64, error) {
	iso, ok := isoExponent[currency]
	if !ok {
		return 0, &FieldError{"currency", fmt.Sprintf("%q is not an ISO 4217 currency code", currency)}
	}
	if amount <= 0 {
		return 0, &FieldError{"amount", "must be positive"}
	}
	inexact := &InexactAmount{Amount: amount, Exponent: exp, Currency: currency, Source: source}
	switch {
	case exp > iso:
		d := pow10(exp - iso)
		if amount%d != 0 {
			return 0, inexact
		}
		return amount / d, nil
	case exp < iso:
		m := pow10(iso - exp)
		if amount > (1<<63-1)/m {
			return 0, inexact
		}
		return amount * m, nil
	}
	return amount, nil
}

// FromStripe converts a Stripe amount of currency (Stripe's lower-case code is accepted) to
// ISO minor units.
func FromStripe(amount int64, currency string) (int64, error) {
	c := strings.ToUpper(currency)
	exp, ok := StripeExponent(c)
	if !ok {
		return 0, &FieldError{"currency", fmt.Sprintf("%.10q is not a currency Stripe documents", currency)}
	}
	return ToMinor(amount, exp, c, "Stripe")
}

// FromMilli converts the App Store's price in milliunits of currency to ISO minor units.
func FromMilli(milli int64, currency string) (int64, error) {
	return ToMinor(milli, 3, currency, "App Store milliunits")
}

func pow10(n int) int64 {
	p := int64(1)
	for range n {
		p *= 10
	}
	return p
}

// FormatAmount writes minor units of currency as a decimal string in major units with exactly
// the currency's decimals ("6.48", "500", "1.234"): the payload's amount, beside amount_minor.
func FormatAmount(minor int64, currency string) string {
	exp := isoExponent[currency]
	neg := minor < 0
	s := new(big.Int).Abs(big.NewInt(minor)).String()
	if exp > 0 {
		if len(s) <= exp {
			s = strings.Repeat("0", exp-len(s)+1) + s
		}
		s = s[:len(s)-exp] + "." + s[len(s)-exp:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// ParseAmount converts a decimal string in major units ("19.99") to minor units of currency,
// exactly: no floating point, and no more decimals than the currency's minor unit has.
func ParseAmount(s, currency string) (int64, error) {
	exp, ok := isoExponent[currency]
	if !ok {
		return 0, &FieldError{"currency", fmt.Sprintf("%q is not an ISO 4217 currency code", currency)}
	}
	if s == "" || len(s) > 24 {
		return 0, &FieldError{"amount", "want a decimal string such as \"19.99\""}
	}
	whole, frac, hasDot := strings.Cut(s, ".")
	if whole == "" || !allDigits(whole) || (hasDot && (frac == "" || !allDigits(frac))) {
		return 0, &FieldError{"amount", fmt.Sprintf("%q is not a plain decimal number", s)}
	}
	if len(frac) > exp {
		return 0, &FieldError{"amount", fmt.Sprintf("%q has more decimals than %s's minor unit (%d)", s, currency, exp)}
	}
	frac += strings.Repeat("0", exp-len(frac))
	if digits := whole + frac; len(digits) <= 18 { // fits an int64: no big.Int (a bill's every row)
		n, _ := strconv.ParseInt(digits, 10, 64)
		if n <= 0 {
			return 0, &FieldError{"amount", "must be positive"}
		}
		return n, nil
	}
	n, ok := new(big.Int).SetString(whole+frac, 10)
	if !ok || !n.IsInt64() {
		return 0, &FieldError{"amount", fmt.Sprintf("%q is out of range", s)}
	}
	if n.Sign() <= 0 {
		return 0, &FieldError{"amount", "must be positive"}
	}
	return n.Int64(), nil
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Currencies lists the ISO 4217 codes payrelay knows, sorted.
func Currencies() []string {
	out := make([]string, 0, len(isoExponent))
	for c := range isoExponent {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}
