package main

import (
	"context"
	"fmt"
	"time"

	"cloud.google.com/go/cloudtasks/apiv2/cloudtaskspb"
	"cloud.google.com/go/firestore"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/payrelay/payrelay/functions/relay"
	"github.com/payrelay/payrelay/local/stack"
	"github.com/payrelay/payrelay/local/tasksemu"
)

// baseline: the same creates with the same clients and concurrency, no HTTP, no payrelay code.
func (e *env) baseline(ctx context.Context, r *Result) error {
	fsc, err := firestore.NewClient(ctx, stack.ProjectID)
	if err != nil {
		return err
	}
	defer fsc.Close()
	tc, err := tasksemu.NewClient(ctx, e.tasksAddr)
	if err != nil {
		return err
	}
	defer tc.Close()
	queue := "projects/payrelay-local/locations/local/queues/bench-baseline"
	if _, err := tc.CreateQueue(ctx, &cloudtaskspb.CreateQueueRequest{Parent: "projects/payrelay-local/locations/local",
		Queue: &cloudtaskspb.Queue{Name: queue}}); err != nil {
		return err
	}
	defer tc.DeleteQueue(context.Background(), &cloudtaskspb.DeleteQueueRequest{Name: queue})
	// Paused: its tasks are created, stored and deduplicated, but never dispatched.
	if _, err := tc.PauseQueue(ctx, &cloudtaskspb.PauseQueueRequest{Name: queue}); err != nil {
		return err
	}
	coll := fsc.Collection(e.collection + "-baseline")
	// Warm the emulators' JVM and caches up with the same operations, unmeasured, so the
	// baseline is not measured cold while the workloads after it run warm.
	e.run(ctx, "warm-up", e.o.Payments, 32, func(i int) error {
		_, err := coll.Doc(fmt.Sprintf("warm-%d", i)).Create(ctx, map[string]any{"n": i})
		return err
	})
	for _, c := range e.o.Concurrency {
		lat, errs, wall := e.run(ctx, fmt.Sprintf("baseline c=%d", c), e.o.Payments, c, func(i int) error {
			id := relay.PaymentID(relay.EnvProduction, "baseline", "bench", fmt.Sprintf("%d-%d", c, i))
			if _, err := coll.Doc(id).Create(ctx, map[string]any{"order_id": id, "amount_minor": 648, "currency": "CNY", "state": "pending", "received_at": time.Now()}); err != nil {
				return err
			}
			_, err := tc.CreateTask(ctx, &cloudtaskspb.CreateTaskRequest{Parent: queue, Task: &cloudtaskspb.Task{
				Name: queue + "/tasks/" + id + "-1", ScheduleTime: timestamppb.Now(),
				MessageType: &cloudtaskspb.Task_HttpRequest{HttpRequest: &cloudtaskspb.HttpRequest{
					Url: "http://127.0.0.1:1/Deliver", Body: []byte(`{"payment_id":"` + id + `","notification":"paid","attempt":1}`)}},
			}})
			return err
		})
		r.Baseline[c] = stats(lat, errs, wall)
	}
	return nil
}
