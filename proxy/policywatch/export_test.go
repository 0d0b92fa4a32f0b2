package policywatch

import "github.com/fsnotify/fsnotify"

// WithoutNotify makes w see changes by its resync only: fsnotify's
// reader waits in a system call, which a synctest bubble cannot wait
// out, so tests of timing run without it.
func WithoutNotify(w *Watcher) *Watcher {
	w.noNotify = true
	return w
}

// BeforeLoad has w call f just before each reload reads the files.
func BeforeLoad(w *Watcher, f func()) *Watcher {
	w.beforeLoad = f
	return w
}

// WithEvents has w take its file events from events instead of fsnotify,
// so that a synctest bubble can send them.
func WithEvents(w *Watcher, events <-chan fsnotify.Event) *Watcher {
	w.events = events
	return w
}
