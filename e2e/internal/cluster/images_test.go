package cluster

import (
	"testing"

	"github.com/minimesh/minimesh/injector"
)

// TestMinimeshInitImage: the imported init image is the one the injector
// names for MinimeshImage, so an injector or chart given MinimeshImage
// injects pods that start.
func TestMinimeshInitImage(t *testing.T) {
	if got, err := injector.DefaultInitImage(MinimeshImage); got != MinimeshInitImage || err != nil {
		t.Fatalf("the injector's init image for %s is %s (%v), the cluster imports %s", MinimeshImage, got, err, MinimeshInitImage)
	}
}
