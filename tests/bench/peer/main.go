// The peer for cirelay's callback benchmarks: Benthos v4.27.0 with only the
// components its pipelines use (HTTP server, bloblang with parse_xml, SQL
// insert into SQLite). Built by tests/bench/run.sh.
package main

import (
	"context"

	"github.com/benthosdev/benthos/v4/public/service"

	_ "github.com/benthosdev/benthos/v4/public/components/io"
	_ "github.com/benthosdev/benthos/v4/public/components/pure"
	_ "github.com/benthosdev/benthos/v4/public/components/pure/extended"
	_ "github.com/benthosdev/benthos/v4/public/components/sql/base"
	_ "modernc.org/sqlite"
)

func main() {
	service.RunCLI(context.Background())
}
