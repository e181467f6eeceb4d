package shim

import (
	"context"
	"fmt"
	"strings"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/cloister/cloister/parent"
)

// Labels the shim sets on the containerd container once its enclave runs
// (`ctr c info`, `ctr -n k8s.io c info` for Kubernetes pods).
const (
	LabelPCR0      = "cloister.dev/pcr0"
	LabelPCR1      = "cloister.dev/pcr1"
	LabelPCR2      = "cloister.dev/pcr2"
	LabelPCR8      = "cloister.dev/pcr8"
	LabelEnclaveID = "cloister.dev/enclave-id"
)

// grpcNamespaceKey is the gRPC metadata key of containerd's namespace.
const grpcNamespaceKey = "containerd-namespace"

// measurementLabels are the labels for an enclave.
func measurementLabels(enclaveID string, m parent.Measurements) map[string]string {
	l := map[string]string{LabelEnclaveID: enclaveID, LabelPCR0: m.PCR0, LabelPCR1: m.PCR1, LabelPCR2: m.PCR2}
	if m.PCR8 != "" {
		l[LabelPCR8] = m.PCR8
	}
	return l
}

// LabelContainer sets labels on container id through containerd's
// containers service at address (its gRPC socket), touching no other
// field or label.
func LabelContainer(ctx context.Context, address, namespace, id string, labels map[string]string) error {
	conn, err := grpc.NewClient("unix://"+strings.TrimPrefix(address, "unix://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("shim: containerd at %s: %w", address, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, grpcNamespaceKey, namespace)
	paths := make([]string, 0, len(labels))
	for k := range labels {
		paths = append(paths, "labels."+k)
	}
	_, err = containersapi.NewContainersClient(conn).Update(ctx, &containersapi.UpdateContainerRequest{
		Container:  &containersapi.Container{ID: id, Labels: labels},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
	})
	if err != nil {
		return fmt.Errorf("shim: label container %s: %w", id, err)
	}
	return nil
}
