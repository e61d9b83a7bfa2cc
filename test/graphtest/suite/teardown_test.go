package suite

import (
	"testing"

	"github.com/docker/docker/daemon/graphdriver/graphtest"
)

// TestTeardown ends the driver TestSetup started (overlay2's TestOverlayTeardown).
// In a file of its own that sorts last: go test runs test files in name order.
func TestTeardown(t *testing.T) {
	graphtest.PutDriver(t)
}
