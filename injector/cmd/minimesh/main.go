// Command minimesh is the control-plane binary: the injector's
// controller and the user's command-line tool.
package main

import "os"

func main() {
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}
