// Package payrelay is the package the Cloud Functions Go buildpack builds from the root of the
// uploaded source. It only imports the framework and the package whose init registers Ingest
// and Deliver with functions.HTTP; everything else lives under functions/, schedule/ and infra/.
package payrelay

import (
	_ "github.com/GoogleCloudPlatform/functions-framework-go/functions"

	_ "github.com/payrelay/payrelay/functions"
)
