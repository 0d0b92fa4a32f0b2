package inflight

import (
	"testing"
	"testing/synctest"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestCounter: Idle is closed once the count falls to zero, for every
// waiter, and counts added while a waiter waits are waited for too.
func TestCounter(t *testing.T) {
	var c Counter
	if !closed(c.Idle()) {
		t.Fatal("Idle of nothing in flight is not closed")
	}
	c.Add()
	a := c.Idle()
	c.Add() // while a waits: a connection accepted as its listener closed
	b := c.Idle()
	c.Done()
	if closed(a) || closed(b) {
		t.Fatal("Idle closed with one still in flight")
	}
	c.Done()
	if !closed(a) || !closed(b) {
		t.Fatal("Idle not closed for every waiter once none is in flight")
	}
	c.Add() // counted again after a drain: a new wait
	if closed(c.Idle()) {
		t.Fatal("Idle closed with one in flight after an earlier wait")
	}
	c.Done()
}

// TestCounterConcurrent: Adds racing a waiter (the race detector checks
// what a WaitGroup would refuse) end in a closed Idle.
func TestCounterConcurrent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var c Counter
		c.Add()
		idle := c.Idle()
		for range 100 {
			c.Add()
			go c.Done()
		}
		c.Done()
		synctest.Wait()
		if !closed(idle) {
			t.Fatal("Idle not closed after every Done")
		}
	})
}
