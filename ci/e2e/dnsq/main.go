// Command dnsq resolves a name through one DNS server with Go's resolver and prints the
// addresses, one per line. The e2e tests run it inside a container on the demo's network
// to ask Consul's DNS (e.g. dnsq consul1:8600 master.demo.service.consul).
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: dnsq SERVER:PORT NAME")
		os.Exit(2)
	}
	server, name := os.Args[1], os.Args[2]
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", server)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dnsq: %s via %s: %v\n", name, server, err)
		os.Exit(1)
	}
	for _, a := range addrs {
		fmt.Println(a)
	}
}
