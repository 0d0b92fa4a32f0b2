package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minimesh/minimesh/internal/freeport"
)

// caddyIdleConns is the most idle keep-alive connections Caddy keeps to
// the upstream: nginx's `keepalive 64`.
const caddyIdleConns = 64

// caddyConfig is Caddy's JSON config for a plain reverse proxy to the
// upstream: one HTTP server on listen (automatic HTTPS off, no access log:
// Caddy logs requests only when a server asks for it), keep-alive to the
// upstream with up to 64 idle connections, logs at ERROR, no admin API.
// Caddy keeps the client's Host header, as the nginx config does.
func caddyConfig(listen, upstream string) string {
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"logging": map[string]any{"logs": map[string]any{
			"default": map[string]any{"level": "ERROR", "writer": map[string]any{"output": "stderr"}}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"bench": map[string]any{
			"listen":          []string{listen},
			"automatic_https": map[string]any{"disable": true},
			"routes": []any{map[string]any{"handle": []any{map[string]any{
				"handler":   "reverse_proxy",
				"upstreams": []any{map[string]any{"dial": upstream}},
				"transport": map[string]any{
					"protocol": "http",
					"keep_alive": map[string]any{
						"enabled":                 true,
						"max_idle_conns_per_host": caddyIdleConns,
						"idle_timeout":            "2m",
					},
				},
			}}}},
		}}}},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return string(b) + "\n"
}

// startCaddy starts `caddy run` with caddyConfig in dir/caddy. Caddy's
// data and config directories are there too, so that it writes nothing
// under $HOME.
func startCaddy(ctx context.Context, ps *procs, caddy, dir, upstream string) (*target, error) {
	listen, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	d := filepath.Join(dir, "caddy")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(d, "caddy.json")
	if err := os.WriteFile(conf, []byte(caddyConfig(listen, upstream)), 0o644); err != nil {
		return nil, err
	}
	env := cleanEnv("XDG_CONFIG_HOME="+filepath.Join(d, "config"), "XDG_DATA_HOME="+filepath.Join(d, "data"))
	p, err := ps.start("caddy", caddy, []string{"run", "--config", conf}, env, d)
	if err != nil {
		return nil, err
	}
	if err := waitOK(ctx, p, "http://"+listen+"/", upstream, 10*time.Second); err != nil {
		return nil, err
	}
	v, _ := runCmd(ctx, caddy, "version")
	if f := strings.Fields(v); len(f) > 0 {
		v = f[0]
	}
	return &target{key: keyCaddy, name: "caddy", addr: listen, proc: p, version: v,
		config: fmt.Sprintf("`reverse_proxy` to the upstream (JSON config), HTTP/1.1 keep-alive with "+
			"`max_idle_conns_per_host` %d, automatic HTTPS off, no access log, log level ERROR, admin API off; Go's every core", caddyIdleConns)}, nil
}
