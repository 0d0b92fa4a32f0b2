// Command pause is the sandbox ("pause") container of the one-node test
// cluster: it holds the pod's namespaces, reaps the zombies that a shared
// PID namespace hands it and exits on SIGINT or SIGTERM. It is built static
// and put into an image by e2e/internal/image, since no registry is
// reachable here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
