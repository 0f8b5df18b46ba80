//go:build pulsar

// The Pulsar variant of the peer (build tag "pulsar") adds Benthos's pulsar
// input and output for tests/bench/bench_pulsar.py.
package main

import _ "github.com/benthosdev/benthos/v4/public/components/pulsar"
