package kms

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// ServeOptions configure Serve.
type ServeOptions struct {
	// TLSCert and TLSKey are PEM files; both empty serves plain HTTP.
	TLSCert, TLSKey string
	// PurgeInterval is how often keys past their deletion date are
	// purged; default 1 hour.
	PurgeInterval time.Duration
}

// Serve serves s on l until ctx is done, then shuts down gracefully
// (waiting up to 10 seconds for requests in flight). It purges keys whose
// deletion date has passed at start and every PurgeInterval.
func (s *Server) Serve(ctx context.Context, l net.Listener, o ServeOptions) error {
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return errors.New("kms: give both a TLS certificate and key, or neither")
	}
	if o.PurgeInterval <= 0 {
		o.PurgeInterval = time.Hour
	}
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, WriteTimeout: time.Minute}
	if o.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			return fmt.Errorf("kms: loading the TLS key pair: %w", err)
		}
		l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(o.PurgeInterval)
		defer t.Stop()
		for {
			if _, err := s.PurgeDeleted(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("kms purge of deleted keys failed", "err", err)
			}
			select {
			case <-ctx.Done():
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				hs.Shutdown(sctx)
				cancel()
				return
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	err := hs.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// CallExplain sends a signed TrentService.CloisterExplain request to the
// key service at endpoint (the SDKs do not know this operation) and
// returns the decoded answer. A service error is returned as *APIError.
func CallExplain(ctx context.Context, hc *http.Client, endpoint, region string, creds aws.Credentials, in ExplainInput) (*ExplainOutput, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+"/", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService.CloisterExplain")
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "kms", region, time.Now()); err != nil {
		return nil, fmt.Errorf("kms: signing: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kms: explain: %w", err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("kms: explain: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e map[string]string
		json.Unmarshal(rb, &e)
		msg := e["message"]
		if msg == "" {
			msg = e["Message"]
		}
		return nil, &APIError{Code: e["__type"], Status: resp.StatusCode, Message: msg}
	}
	var out ExplainOutput
	if err := json.Unmarshal(rb, &out); err != nil {
		return nil, fmt.Errorf("kms: explain: decoding the answer: %w", err)
	}
	return &out, nil
}
