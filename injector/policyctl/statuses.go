package policyctl

import (
	"context"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

const (
	// statusTimeout bounds one status write, client-go's rate limiter
	// wait included: an API server (or a proxy before it) that never
	// answers holds back that object's status only until then, and the
	// write is tried again.
	statusTimeout = 10 * time.Second
	// retryMin and retryMax bound the wait before failed writes are
	// tried again: it doubles from one round of failures to the next,
	// and a write that succeeds starts it again from retryMin.
	retryMin = time.Second
	retryMax = time.Minute
)

// statusJob is one object's verdict, as a sync computed it, for its
// status.
type statusJob struct {
	key     string // namespace/name
	u       *unstructured.Unstructured
	verdict error
	served  bool
	rec     lastValid
	batch   uint64 // the put it came with
}

// statusQueue takes the status writes off sync, so that a policy is
// published whatever the API server does with the statuses: client-go
// writes 5 a second after a burst of 10 (100 new objects: 18 s), and a
// write can hang.
// Before, sync wrote every status after its publish and read the next
// change only then: an edit waited for every write (17.6 s after 100
// new objects), and one write that hung held every later change back
// for good while /readyz said ready.
//
// It keeps, per object, only the latest verdict not yet written: the
// objects' order is kept (the oldest first, as sync sorts them), a
// newer verdict replaces an older one in its place, and one written
// while the next came is queued again. So there is at most one write
// per object in the queue whatever the rate of changes, and none for
// an object that is gone.
type statusQueue struct {
	log *slog.Logger
	// write writes one status; the error says whether to try again
	// (see run).
	write func(context.Context, statusJob) error
	// drained, when set (tests), is called with the objects of the
	// latest put once every write of it was made or given up.
	drained func(objs []any)

	kick chan struct{} // capacity 1: a put since run last looked

	mu      sync.Mutex
	batch   uint64               // puts so far
	pending map[string]statusJob // by key: the latest verdict not written yet
	order   []string             // pending's keys in writing order; a key no longer pending is skipped
	failed  []statusJob          // failed writes of the latest put, waiting for the retry
	objs    []any                // the latest put's objects, for drained
	told    bool                 // drained was called with objs
}

func newStatusQueue(log *slog.Logger, write func(context.Context, statusJob) error, drained func([]any)) *statusQueue {
	return &statusQueue{log: log, write: write, drained: drained, kick: make(chan struct{}, 1), pending: map[string]statusJob{}}
}

// put hands over the verdicts of one sync, which has one for every
// object there is (objs). An object gone from it has nothing left to
// write, and a failed write waiting for its retry gives way to the
// newer verdict here (or to its object's deletion).
func (q *statusQueue) put(objs []any, jobs []statusJob) {
	q.mu.Lock()
	q.batch++
	for _, j := range jobs {
		j.batch = q.batch
		if _, ok := q.pending[j.key]; !ok {
			q.order = append(q.order, j.key)
		}
		q.pending[j.key] = j
	}
	if len(q.pending) > len(jobs) {
		for k, j := range q.pending {
			if j.batch != q.batch {
				delete(q.pending, k)
			}
		}
	}
	if len(q.order) > 2*len(q.pending)+64 {
		// order keeps the keys of objects that went before their write
		// was made: while a write hangs, each object created and deleted
		// would grow it for good.
		seen := make(map[string]bool, len(q.pending))
		kept := q.order[:0]
		for _, k := range q.order {
			if _, ok := q.pending[k]; ok && !seen[k] {
				seen[k] = true
				kept = append(kept, k)
			}
		}
		clear(q.order[len(kept):])
		q.order = kept
	}
	q.failed = q.failed[:0]
	q.objs, q.told = objs, false
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// pop takes the next verdict to write.
func (q *statusQueue) pop() (statusJob, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) > 0 {
		k := q.order[0]
		q.order = q.order[1:]
		if j, ok := q.pending[k]; ok {
			delete(q.pending, k)
			return j, true
		}
	}
	q.order = nil // lets the array go rather than growing it forever from its end
	return statusJob{}, false
}

// fail keeps j for the retry, unless a put came since: that has its
// object's newer verdict, pending, or says it is gone.
func (q *statusQueue) fail(j statusJob) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if j.batch == q.batch {
		q.failed = append(q.failed, j)
	}
}

// retry queues the failed writes again.
func (q *statusQueue) retry() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, j := range q.failed {
		if _, ok := q.pending[j.key]; !ok {
			q.pending[j.key] = j
			q.order = append(q.order, j.key)
		}
	}
	q.failed = q.failed[:0]
}

// idle reports the objects of the latest put if drained has not been
// told of them and nothing is left to write.
func (q *statusQueue) idle() ([]any, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.told || len(q.pending) > 0 {
		return nil, false
	}
	q.told = true
	return q.objs, true
}

// run writes the statuses until ctx ends. A write that fails is tried
// again after the backoff, unless a newer verdict for its object comes
// first; not after a Conflict or NotFound (the object changed or went:
// its informer event brings the next verdict), nor when the API server
// refuses the write itself (Forbidden, Invalid...: the same write would
// be refused again; the next verdict, at the latest the informer's
// resync every 10 minutes, tries again).
func (q *statusQueue) run(ctx context.Context) {
	var (
		timer  *time.Timer
		retryC <-chan time.Time // nil: no retry planned
		wait   time.Duration    // the last backoff; 0 after a write that succeeded
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for ctx.Err() == nil {
		j, ok := q.pop()
		if !ok {
			if objs, ok := q.idle(); ok && q.drained != nil {
				q.drained(objs)
			}
			select {
			case <-ctx.Done():
				return
			case <-q.kick:
			case <-retryC:
				retryC = nil
				q.retry()
			}
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, statusTimeout)
		err := q.write(wctx, j)
		cancel()
		switch {
		case err == nil:
			wait = 0
		case ctx.Err() != nil:
			return
		case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err), apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
			q.log.Error("write policy status", "policy", j.key, "err", err)
		default:
			q.fail(j)
			if retryC == nil {
				wait = min(max(2*wait, retryMin), retryMax)
				timer = time.NewTimer(wait)
				retryC = timer.C
			}
			q.log.Error("write policy status; trying again", "policy", j.key, "err", err, "in", wait)
		}
	}
}
