package main

import "syscall"

// sysProcAttr puts the sidecar in its own process group, so that Ctrl-C in
// the terminal reaches only the demo (which then stops the sidecar in
// order), and has the kernel send it SIGTERM if the demo dies without
// cleaning up.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
