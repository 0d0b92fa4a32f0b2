//go:build race

package main

// With the race tag, TestMain builds the binary under test with the race detector when
// the tests themselves run with -race.
func init() { buildFlags = append(buildFlags, "-race") }
