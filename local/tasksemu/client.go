package tasksemu

import (
	"context"

	cloudtasks "cloud.google.com/go/cloudtasks/apiv2"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// NewClient connects the genuine Cloud Tasks client to an emulator at addr over plain gRPC.
// (payrelay's queue adapter does the same when CLOUD_TASKS_EMULATOR_HOST is set; deployed code
// does not import local/.)
func NewClient(ctx context.Context, addr string) (*cloudtasks.Client, error) {
	return cloudtasks.NewClient(ctx, option.WithEndpoint(addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
}
