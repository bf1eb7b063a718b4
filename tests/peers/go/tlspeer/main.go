// tlspeer: an OpenAI-style HTTPS server and client for infertap's TLS capture tests.
//
// Standard library only. The server makes a self-signed certificate at startup (crypto/tls), and
// serves HTTP/2 (negotiated by ALPN, Go's default over TLS) and HTTP/1.1:
//
//	POST /v1/chat/completions  {"model":..., "stream": true|false}
//	  stream: a text/event-stream of OpenAI chat chunks (role chunk, -tokens content chunks, a
//	  finish chunk with usage) and "data: [DONE]"; the first token after -ttft-ms, then one per
//	  -token-interval-ms. Not stream: one chat.completion JSON body.
//
// The client sends -n requests over one connection (-http2 or HTTP/1.1, -stream or not) and prints
// one JSON line per request: {"status", "proto", "chunks", "content_chunks", "ttft_ms",
// "request_id", "duration_ms", "model", "stream"}.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type chatRequest struct {
	Model  string `json:"model"`
	Stream bool   `json:"stream"`
}

func chunk(id, model string, delta map[string]string, finish *string, usage map[string]int) []byte {
	choice := map[string]any{"index": 0, "delta": delta, "finish_reason": finish}
	body := map[string]any{
		"id": id, "object": "chat.completion.chunk", "created": time.Now().Unix(),
		"model": model, "choices": []any{choice},
	}
	if usage != nil {
		body["usage"] = usage
	}
	b, _ := json.Marshal(body)
	return b
}

func serve(addr, readyFile string, tokens int, ttft, interval time.Duration) {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		var req chatRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Model == "" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			io.WriteString(w, `{"error":{"message":"bad request","type":"BadRequestError","code":400}}`)
			return
		}
		id := "chatcmpl-" + fmt.Sprint(time.Now().UnixNano())
		usage := map[string]int{"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
		stop := "stop"
		if !req.Stream {
			time.Sleep(ttft)
			w.Header().Set("Content-Type", "application/json")
			b, _ := json.Marshal(map[string]any{
				"id": id, "object": "chat.completion", "created": time.Now().Unix(), "model": req.Model,
				"choices": []any{map[string]any{"index": 0, "finish_reason": stop,
					"message": map[string]string{"role": "assistant", "content": strings.Repeat("w ", tokens)}}},
				"usage": usage,
			})
			w.Write(b)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(200)
		fl := w.(http.Flusher)
		fl.Flush()
		time.Sleep(ttft)
		send := func(b []byte) {
			w.Write([]byte("data: "))
			w.Write(b)
			w.Write([]byte("\n\n"))
			fl.Flush()
		}
		send(chunk(id, req.Model, map[string]string{"role": "assistant", "content": ""}, nil, nil))
		for i := 0; i < tokens; i++ {
			if i > 0 {
				time.Sleep(interval)
			}
			var fin *string
			var u map[string]int
			if i == tokens-1 {
				fin, u = &stop, usage
			}
			send(chunk(id, req.Model, map[string]string{"content": fmt.Sprintf(" w%d", i)}, fin, u))
		}
		w.Write([]byte("data: [DONE]\n\n"))
		fl.Flush()
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSigned()}}}
	if readyFile != "" {
		port := ln.Addr().(*net.TCPAddr).Port
		os.WriteFile(readyFile+".tmp", []byte(fmt.Sprint(port)), 0o644)
		os.Rename(readyFile+".tmp", readyFile)
	}
	// ServeTLS enables HTTP/2 (ALPN "h2") unless the client offers only http/1.1.
	panic(srv.ServeTLS(ln, "", ""))
}

func client(url string, n int, stream, h2 bool, model string) {
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2:   h2,
		MaxIdleConnsPerHost: 1,
	}
	if !h2 {
		// A non-nil, empty map turns HTTP/2 off: ALPN offers http/1.1 only.
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	c := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	out := json.NewEncoder(os.Stdout)
	for i := 0; i < n; i++ {
		rid := fmt.Sprintf("tlspeer-%d-%d", time.Now().UnixNano(), i)
		body, _ := json.Marshal(map[string]any{
			"model": model, "stream": stream,
			"messages": []any{map[string]string{"role": "user", "content": "hello"}},
		})
		req, _ := http.NewRequestWithContext(context.Background(), "POST", url+"/v1/chat/completions", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", rid)
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, "request failed:", err)
			os.Exit(1)
		}
		chunks, contentChunks, ttft := 0, 0, -1.0
		if stream {
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				line := sc.Text()
				if !strings.HasPrefix(line, "data: ") || line == "data: [DONE]" {
					continue
				}
				if strings.Contains(line, `"content":" w`) {
					contentChunks++
					if ttft < 0 {
						ttft = float64(time.Since(start).Microseconds()) / 1000
					}
				}
				chunks++
			}
		} else {
			io.Copy(io.Discard, resp.Body)
		}
		resp.Body.Close()
		out.Encode(map[string]any{
			"status": resp.StatusCode, "proto": resp.Proto, "chunks": chunks, "content_chunks": contentChunks,
			"ttft_ms": ttft, "model": model, "stream": stream,
			"request_id": rid, "duration_ms": float64(time.Since(start).Microseconds()) / 1000,
		})
	}
}

func main() {
	mode := flag.String("mode", "server", "server or client")
	addr := flag.String("addr", "127.0.0.1:0", "server: listen address")
	ready := flag.String("ready-file", "", "server: write the port here once listening")
	tokens := flag.Int("tokens", 8, "server: content tokens per response")
	ttft := flag.Duration("ttft", 80*time.Millisecond, "server: time to first token")
	interval := flag.Duration("token-interval", 15*time.Millisecond, "server: time between tokens")
	url := flag.String("url", "", "client: base URL, https://127.0.0.1:PORT")
	n := flag.Int("n", 1, "client: requests over one connection")
	stream := flag.Bool("stream", true, "client: streaming requests")
	h2 := flag.Bool("http2", false, "client: negotiate HTTP/2")
	model := flag.String("model", "tls-model", "client: model name")
	flag.Parse()
	if *mode == "server" {
		serve(*addr, *ready, *tokens, *ttft, *interval)
	} else {
		client(*url, *n, *stream, *h2, *model)
	}
}
