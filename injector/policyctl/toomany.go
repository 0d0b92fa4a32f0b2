package policyctl

import (
	"errors"

	"github.com/minimesh/minimesh/policy"
	"github.com/minimesh/minimesh/xds"
)

// leftOuter is a Sink that leaves policies out of what it serves for
// size: the xDS server, when a namespace's CDS response would be over
// what a sidecar takes (xds.MaxClusterBytes). What it leaves out depends
// only on the policies set, so replicas agree on it.
type leftOuter interface {
	PoliciesLeftOut() []xds.PolicyLeftOut
}

// tooMany is the verdict on a valid policy that is not served because
// its namespace's policies would not fit in a sidecar's CDS response
// (Accepted=False, reason xds.ReasonTooMany): before, such an object
// said Accepted=True while no sidecar of its namespace applied anything.
type tooMany struct{ xds.PolicyLeftOut }

func (t tooMany) Error() string { return t.Message() }

// markTooMany, called after Sink.Set with what it was given, makes the
// verdict of each object whose served version the sink left out
// tooMany, and says it is not served. goods[i] is the version of object
// i that was given to Set (nil: none). An invalid object whose last
// valid version is left out keeps its Invalid verdict, no longer
// "served".
func markTooMany(sink Sink, goods []*policy.ResiliencePolicy, verdicts []error, served []bool) {
	lo, ok := sink.(leftOuter)
	if !ok {
		return
	}
	left := lo.PoliciesLeftOut()
	if len(left) == 0 {
		return
	}
	byPolicy := make(map[*policy.ResiliencePolicy]xds.PolicyLeftOut, len(left))
	for _, l := range left {
		byPolicy[l.Policy] = l
	}
	for i, g := range goods {
		l, ok := byPolicy[g]
		if g == nil || !ok || !served[i] {
			continue
		}
		served[i] = false
		if verdicts[i] == nil {
			verdicts[i] = tooMany{l}
		}
	}
}

// tooManyCondition is the Accepted condition of a tooMany verdict
// (ok false for any other).
func tooManyCondition(verdict error) (status, reason, msg string, ok bool) {
	var tm tooMany
	if !errors.As(verdict, &tm) {
		return "", "", "", false
	}
	return "False", xds.ReasonTooMany, tm.Error(), true
}
