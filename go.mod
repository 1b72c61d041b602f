module github.com/payrelay/payrelay

go 1.26.0

require (
	github.com/google/go-cmp v0.7.0
	github.com/sethvargo/go-retry v0.5.0
)
