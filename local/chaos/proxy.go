// Package chaos injects faults into the real stack for payrelay's fault-injection suite: a TCP
// proxy that can refuse or black-hole the connections to a dependency (Firestore, the Cloud
// Tasks emulator, the game server) while the processes behind it keep running.
package chaos

import (
	"io"
	"net"
	"sync"
)

// Mode is what the proxy does with connections.
type Mode int

const (
	// Pass forwards connections.
	Pass Mode = iota
	// Refuse closes new connections at once and cuts existing ones: the dependency is down.
	Refuse
	// Blackhole accepts new connections and never forwards a byte, and cuts existing ones:
	// the dependency hangs.
	Blackhole
)

// Proxy forwards a loopback port to a target, with outages on demand.
type Proxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	mode     Mode
	conns    map[net.Conn]struct{}
	accepted chan struct{}
	wg       sync.WaitGroup
}

// NewProxy listens on addr ("127.0.0.1:0" picks a port) and forwards to target.
func NewProxy(addr, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, accepted: make(chan struct{}, 1024)}
	go p.serve()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Accepted receives one value per connection accepted while black-holing.
func (p *Proxy) Accepted() <-chan struct{} { return p.accepted }

// SetMode switches the proxy and cuts every connection it holds: leaving Pass ends the
// forwarded ones (the outage begins), and leaving Blackhole ends the held ones, which would
// otherwise hang their clients' handshakes past the outage.
func (p *Proxy) SetMode(m Mode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m != p.mode {
		for c := range p.conns {
			c.Close()
		}
	}
	p.mode = m
}

// Close stops the proxy and cuts its connections.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.SetMode(Refuse)
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == Refuse {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	c.Close()
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		p.mu.Lock()
		mode := p.mode
		p.mu.Unlock()
		if mode == Blackhole {
			select {
			case p.accepted <- struct{}{}:
			default:
			}
			continue // held open, never forwarded, until SetMode or Close cuts it
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

func (p *Proxy) forward(c net.Conn) {
	defer p.wg.Done()
	defer p.untrack(c)
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.untrack(up)
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done // either side ending ends both
}
