//go:build !unix

package attest

import "testing"

type cpuMeter struct{}

func startCPU(*testing.B) cpuMeter { return cpuMeter{} }
func (cpuMeter) stop()             {}
