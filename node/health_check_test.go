package node

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestCheckHealth(t *testing.T) {
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	defer bad.Close()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	for check, healthy := range map[string]bool{
		"tcp:" + ln.Addr().String(): true,
		"tcp:" + closedAddr:         false,
		ok.URL:                      true,
		bad.URL:                     false,
		"cmd:true":                  true,
		"cmd:exit 3":                false,
		"bogus:1":                   false,
	} {
		err := checkHealth(ctx, check, 2*time.Second)
		if (err == nil) != healthy {
			t.Errorf("checkHealth(%q) = %v, want healthy=%v", check, err, healthy)
		}
	}
}
