// Package redis is the production state backend on Redis (go-redis v9): the
// index, the transfer queue (Redis Streams with consumer groups) and the
// audit log, shared by every gateway replica. It imports package gateway and
// github.com/redis/go-redis/v9 only.
package redis

import (
	"context"
	"errors"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/dicom-gateway/gateway/gateway"
)

// Client is a connection to Redis plus the key prefix under which this
// gateway's keys live (so tests and several deployments can share a server).
type Client struct {
	rdb    goredis.UniversalClient
	prefix string
}

// Open connects to the Redis at url (redis://host:port/db or
// unix:///path?db=N). Keys are written under prefix (e.g. "gw:").
func Open(url, prefix string) (*Client, error) {
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	return &Client{rdb: goredis.NewClient(opts), prefix: prefix}, nil
}

// NewClient wraps an existing go-redis client.
func NewClient(rdb goredis.UniversalClient, prefix string) *Client {
	return &Client{rdb: rdb, prefix: prefix}
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
