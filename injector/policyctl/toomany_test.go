package policyctl

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds"
)

// leftOutSink is a Sink that leaves some policies out for size.
type leftOutSink struct {
	setSink
	left []xds.PolicyLeftOut
}

func (s *leftOutSink) PoliciesLeftOut() []xds.PolicyLeftOut { return s.left }

// TestMarkTooMany: an object whose served version the server leaves out
// for size is Accepted=False, reason TooMany, and not served; an invalid
// one whose last valid version is left out stays Invalid, no longer
// served; the others are untouched, and a sink that leaves nothing out
// (the files' sink, a test's) changes nothing.
func TestMarkTooMany(t *testing.T) {
	p := func(name string) *policy.ResiliencePolicy {
		return &policy.ResiliencePolicy{Metadata: policy.ObjectMeta{Name: name, Namespace: "shop"}}
	}
	old, newest, broken, conflicted := p("old"), p("newest"), p("broken"), p("other")
	invalidErr := errors.New("spec.timeout: want a duration")
	goods := []*policy.ResiliencePolicy{old, newest, broken, nil, conflicted}
	left := []xds.PolicyLeftOut{
		{Policy: newest, Namespace: "shop", Bytes: 1250, Total: 4 << 20},
		{Policy: broken, Namespace: "shop", Bytes: 1250, Total: 4 << 20},
	}
	for _, tc := range []struct {
		name        string
		sink        Sink
		wantServed  []bool
		wantReasons []string
	}{
		{"left out", &leftOutSink{left: left}, []bool{true, false, false, false, false}, []string{"", xds.ReasonTooMany, "", "", ""}},
		{"nothing left out", &leftOutSink{}, []bool{true, true, true, false, false}, []string{"", "", "", "", ""}},
		{"a sink that does not bound", &setSink{}, []bool{true, true, true, false, false}, []string{"", "", "", "", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			verdicts := []error{nil, nil, invalidErr, invalidErr, conflict{errors.New("x")}}
			served := []bool{true, true, true, false, false}
			markTooMany(tc.sink, goods, verdicts, served)
			for i := range goods {
				if served[i] != tc.wantServed[i] {
					t.Errorf("object %d: served %v, want %v", i, served[i], tc.wantServed[i])
				}
				status, reason, msg, ok := tooManyCondition(verdicts[i])
				if reason != tc.wantReasons[i] || ok != (tc.wantReasons[i] != "") {
					t.Errorf("object %d: reason %q (%v), want %q", i, reason, ok, tc.wantReasons[i])
				}
				if ok && (status != "False" || !strings.Contains(msg, "namespace shop's policies would be 4194304 bytes") || !strings.Contains(msg, "newest")) {
					t.Errorf("object %d: Accepted=%s, %q", i, status, msg)
				}
			}
			if !errors.Is(verdicts[2], invalidErr) {
				t.Errorf("an invalid object's verdict became %v", verdicts[2])
			}
		})
	}
}

// nameLeftOutSink leaves out, of each Set, the policies named in names,
// as the xDS server leaves out those past its bound.
type nameLeftOutSink struct {
	setSink
	names map[string]bool
	mu    sync.Mutex
	left  []xds.PolicyLeftOut
}

func (s *nameLeftOutSink) Set(global []*policy.ResiliencePolicy, byNS map[string][]*policy.ResiliencePolicy) error {
	var left []xds.PolicyLeftOut
	for ns, pols := range byNS {
		for _, p := range pols {
			if s.names[p.Metadata.Name] {
				left = append(left, xds.PolicyLeftOut{Policy: p, Namespace: ns, Bytes: 1000, Total: 4 << 20})
			}
		}
	}
	s.mu.Lock()
	s.left = left
	s.mu.Unlock()
	return s.setSink.Set(global, byNS)
}

func (s *nameLeftOutSink) PoliciesLeftOut() []xds.PolicyLeftOut {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.left
}

// TestControllerWritesTooMany: the controller asks its sink what it
// left out after each Set, and the object says so: Accepted=False,
// reason TooMany, while the others stay Accepted=True.
func TestControllerWritesTooMany(t *testing.T) {
	now := time.Now()
	c := fakeClient(
		object("shop", "fits", now.Add(-time.Hour), map[string]any{"service": "geo", "timeout": "2s"}),
		object("shop", "newest", now, map[string]any{"service": "pay", "timeout": "1s"}),
	)
	sink := &nameLeftOutSink{names: map[string]bool{"newest": true}}
	ctl := &Controller{Client: c, Sink: sink, GlobalNamespace: "minimesh", Log: quiet()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ctl.Run(ctx)

	accepted := func(name string) (status, reason, msg string) {
		u, err := c.Resource(GVR).Namespace("shop").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, x := range conds {
			if m, _ := x.(map[string]any); m["type"] == "Accepted" {
				return m["status"].(string), m["reason"].(string), m["message"].(string)
			}
		}
		return "", "", ""
	}
	for _, want := range []struct{ name, status, reason string }{
		{"fits", "True", "Valid"}, {"newest", "False", xds.ReasonTooMany},
	} {
		waitFor(t, want.name+"'s status", func() bool { st, _, _ := accepted(want.name); return st != "" })
		if st, reason, msg := accepted(want.name); st != want.status || reason != want.reason {
			t.Errorf("%s: Accepted=%s %s (%s), want %s %s", want.name, st, reason, msg, want.status, want.reason)
		}
	}
}
