package relay_test

import (
	"errors"
	"math/big"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/payrelay/payrelay/functions/relay"
)

// The figures: one amount of each currency whose exponent is special somewhere, read
// from Stripe's representation into ISO minor units.
func TestFromStripe(t *testing.T) {
	t.Parallel()
	cases := []struct {
		cur     string
		stripe  int64
		want    int64
		decimal string
		inexact bool
	}{
		{cur: "usd", stripe: 1999, want: 1999, decimal: "19.99"},
		{cur: "jpy", stripe: 500, want: 500, decimal: "500"},
		// MGA: zero-decimal in Stripe, two decimals in ISO 4217.
		{cur: "mga", stripe: 5000, want: 500000, decimal: "5000.00"},
		// ISK: two decimals in Stripe (always 00), none in ISO 4217.
		{cur: "isk", stripe: 50000, want: 500, decimal: "500"},
		{cur: "isk", stripe: 50050, inexact: true},
		{cur: "huf", stripe: 129900, want: 129900, decimal: "1299.00"},
		{cur: "twd", stripe: 3000, want: 3000, decimal: "30.00"},
		{cur: "kwd", stripe: 1250, want: 1250, decimal: "1.250"},
		{cur: "ugx", stripe: 3700, want: 3700, decimal: "3700"},
	}
	for _, tc := range cases {
		got, err := relay.FromStripe(tc.stripe, tc.cur)
		var inexact *relay.InexactAmount
		if tc.inexact {
			if !errors.As(err, &inexact) {
				t.Errorf("FromStripe(%d, %s) = %d, %v; want an InexactAmount refusal", tc.stripe, tc.cur, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("FromStripe(%d, %s) = %d, %v; want %d", tc.stripe, tc.cur, got, err, tc.want)
			continue
		}
		cur := strings.ToUpper(tc.cur)
		if d := relay.FormatAmount(got, cur); d != tc.decimal {
			t.Errorf("FormatAmount(%d, %s) = %q, want %q", got, cur, d, tc.decimal)
		}
	}
	for _, cur := range []string{"IQD", "LYD", "XXX", "usd "} {
		if got, err := relay.FromStripe(1000, cur); err == nil {
			t.Errorf("FromStripe(1000, %q) = %d; want refused (not a currency Stripe documents)", cur, got)
		}
	}
}

// Every currency of both tables, many amounts each: an accepted conversion keeps the value
// exactly (amount / 10^from == minor / 10^iso as rationals), a refused one could not have,
// and the decimal string reads back to the same minor units.
func TestConversionProperties(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	amounts := func() []int64 {
		out := []int64{1, 9, 10, 99, 100, 101, 1000, 123456789, 1<<62 + 1, 1<<63 - 1}
		for range 200 {
			out = append(out, rng.Int64N(1<<40)+1)
		}
		return out
	}
	stripeKnown := 0
	for _, cur := range relay.Currencies() {
		iso, ok := relay.CurrencyExponent(cur)
		if !ok || iso < 0 || iso > 3 {
			t.Fatalf("%s: ISO exponent %d, %v", cur, iso, ok)
		}
		reps := map[string]int{"milliunits": 3}
		if e, ok := relay.StripeExponent(cur); ok {
			reps["stripe"] = e
			stripeKnown++
		}
		for rep, from := range reps {
			for _, a := range amounts() {
				var got int64
				var err error
				if rep == "stripe" {
					got, err = relay.FromStripe(a, cur)
				} else {
					got, err = relay.FromMilli(a, cur)
				}
				value := new(big.Rat).SetFrac(big.NewInt(a), pow(from))
				exact := new(big.Rat).Mul(value, new(big.Rat).SetInt(pow(iso)))
				var inexact *relay.InexactAmount
				switch {
				case err == nil:
					if new(big.Rat).SetFrac(big.NewInt(got), pow(iso)).Cmp(value) != 0 {
						t.Fatalf("%s %s %d -> %d minor (ISO %d decimals): value changed", rep, cur, a, got, iso)
					}
					back, perr := relay.ParseAmount(relay.FormatAmount(got, cur), cur)
					if perr != nil || back != got {
						t.Fatalf("%s: ParseAmount(FormatAmount(%d)) = %d, %v", cur, got, back, perr)
					}
				case errors.As(err, &inexact):
					if exact.IsInt() && exact.Num().IsInt64() {
						t.Fatalf("%s %s %d refused as inexact, but is %s minor units", rep, cur, a, exact.RatString())
					}
				default:
					t.Fatalf("%s %s %d: %v", rep, cur, a, err)
				}
			}
		}
	}
	if stripeKnown < 130 {
		t.Errorf("Stripe's table knows %d currencies; its document lists 135+ presentment currencies", stripeKnown)
	}
}

func TestFormatAmount(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		minor int64
		cur   string
		want  string
	}{{648, "CNY", "6.48"}, {5, "CNY", "0.05"}, {0, "USD", "0.00"}, {500, "JPY", "500"}, {1, "KWD", "0.001"}, {1234, "KWD", "1.234"}, {500, "ISK", "500"}} {
		if got := relay.FormatAmount(tc.minor, tc.cur); got != tc.want {
			t.Errorf("FormatAmount(%d, %s) = %q, want %q", tc.minor, tc.cur, got, tc.want)
		}
	}
}

func pow(n int) *big.Int { return new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n)), nil) }
