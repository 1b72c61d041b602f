// Command fnserver serves payrelay's registered functions with functions-framework, configured
// from the environment, the way Cloud Functions runs them: all functions at /Ingest and
// /Deliver, or only FUNCTION_TARGET at /. The fault-injection suite runs it as a process of its
// own so that it can kill it.
package main

import (
	"log"
	"os"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"

	_ "github.com/payrelay/payrelay/functions"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if err := funcframework.StartHostPort("127.0.0.1", port); err != nil {
		log.Fatal(err)
	}
}
