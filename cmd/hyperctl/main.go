// Command hyperctl is the command line of the HyperSDK fleet: jobs, schedules, webhooks,
// VM discovery, the controller cluster and the agents, through the REST API of any
// controller.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}
