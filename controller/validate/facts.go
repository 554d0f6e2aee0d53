package validate

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/proto"
)

// FactsFunc asks one agent for its host facts.
type FactsFunc func(ctx context.Context, a proto.AgentInfo) (*proto.AgentFacts, error)

// HTTPFacts asks agents over their API (GET http://<api_addr>/v1/facts), presenting the
// join token when the fleet has one. Each answer is bounded in time and size.
func HTTPFacts(joinToken string, timeout time.Duration) FactsFunc {
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: (&net.Dialer{Timeout: timeout}).DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second,
	}}
	return func(ctx context.Context, a proto.AgentInfo) (*proto.AgentFacts, error) {
		if a.APIAddr == "" {
			return nil, fmt.Errorf("agent %s advertises no api_addr", a.Name)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.APIAddr+proto.AgentFactsPath, nil)
		if err != nil {
			return nil, err
		}
		if joinToken != "" {
			req.Header.Set(proto.AgentTokenHeader, joinToken)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s answered %s", a.APIAddr, resp.Status)
		}
		var f proto.AgentFacts
		if err := json.Unmarshal(body, &f); err != nil {
			return nil, fmt.Errorf("%s: facts: %v", a.APIAddr, err)
		}
		return &f, nil
	}
}

// factsTTL: facts change when domains are defined or networks created, minutes apart; a
// short cache spares the agents a burst of validations (a wave of submits).
const factsTTL = 5 * time.Second

type factsEntry struct {
	at    time.Time
	facts *proto.AgentFacts
	err   string
}

type factsCache struct {
	fetch FactsFunc
	mu    sync.Mutex
	m     map[string]factsEntry
}

func newFactsCache(f FactsFunc) *factsCache {
	return &factsCache{fetch: f, m: map[string]factsEntry{}}
}

// agents pairs every live agent with its facts (asked concurrently, cached for factsTTL).
func (c *factsCache) agents(ctx context.Context, infos []proto.AgentInfo) []Agent {
	out := make([]Agent, len(infos))
	var wg sync.WaitGroup
	for i, in := range infos {
		out[i].Info = in
		if c.fetch == nil || !in.State.Member() {
			out[i].FactsErr = "not asked"
			continue
		}
		c.mu.Lock()
		e, ok := c.m[in.Name]
		c.mu.Unlock()
		if ok && time.Since(e.at) < factsTTL {
			out[i].Facts, out[i].FactsErr = e.facts, e.err
			continue
		}
		wg.Add(1)
		go func(i int, in proto.AgentInfo) {
			defer wg.Done()
			f, err := c.fetch(ctx, in)
			e := factsEntry{at: time.Now(), facts: f}
			if err != nil {
				e.facts, e.err = nil, err.Error()
			}
			c.mu.Lock()
			c.m[in.Name] = e
			c.mu.Unlock()
			out[i].Facts, out[i].FactsErr = e.facts, e.err
		}(i, in)
	}
	wg.Wait()
	return out
}
