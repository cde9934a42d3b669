// Package redis is the production state backend on Redis (go-redis v9): the
// index, the transfer queue (Redis Streams with consumer groups) and the
// audit log, shared by every gateway replica. It imports package gateway and
// github.com/redis/go-redis/v9 only.
package redis

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/gateway"
)

// Client is a connection to Redis plus the key prefix under which this
// gateway's keys live (so tests and several deployments can share a server).
type Client struct {
	rdb    goredis.UniversalClient
	prefix string
}

// Open connects to the Redis at rawURL: one server (redis://host:port/db or
// unix:///path?db=N) or a Redis Cluster, named by one or more seed
// addresses as redis://h1:p1?addr=h2:p2&addr=h3:p3 (go-redis's cluster URL;
// a cluster reached through one seed repeats it: redis://h1:p1?addr=h1:p1).
// The addr parameter is what tells a cluster from a single server, which
// changes the index's key layout (see Index). Keys are written under prefix
// (e.g. "gw:").
func Open(rawURL, prefix string) (*Client, error) {
	if IsClusterURL(rawURL) {
		opts, err := goredis.ParseClusterURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis cluster url: %w", err)
		}
		return &Client{rdb: goredis.NewClusterClient(opts), prefix: prefix}, nil
	}
	opts, err := goredis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	return &Client{rdb: goredis.NewClient(opts), prefix: prefix}, nil
}

// IsClusterURL reports whether rawURL names a Redis Cluster: a redis:// or
// rediss:// URL with at least one addr query parameter.
func IsClusterURL(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
		return false
	}
	return u.Query().Has("addr")
}

// NewClient wraps an existing go-redis client (a *goredis.ClusterClient
// makes it a cluster client).
func NewClient(rdb goredis.UniversalClient, prefix string) *Client {
	return &Client{rdb: rdb, prefix: prefix}
}

// Cluster reports whether the client talks to a Redis Cluster.
func (c *Client) Cluster() bool {
	_, ok := c.rdb.(*goredis.ClusterClient)
	return ok
}

// Redis returns the go-redis client for the stores in this package.
func (c *Client) Redis() goredis.UniversalClient { return c.rdb }

// Key returns the full key for name under this client's prefix.
func (c *Client) Key(name string) string { return c.prefix + name }

// Ping reports whether Redis answers.
func (c *Client) Ping(ctx context.Context) error {
	if err := c.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %v: %w", err, gateway.ErrUnavailable)
	}
	return nil
}

// Close closes the connection pool.
func (c *Client) Close() error { return c.rdb.Close() }

// translate maps go-redis errors to gateway sentinels.
func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, goredis.Nil):
		return gateway.ErrNotFound
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	default:
		return fmt.Errorf("redis: %v: %w", err, gateway.ErrUnavailable)
	}
}

var _ = translate
