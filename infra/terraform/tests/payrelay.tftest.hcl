# Offline tests of terraform.tf against the real google provider's schema, with its API mocked.
# Run from the repository root: terraform test -test-directory=infra/terraform/tests

mock_provider "google" {
  mock_data "google_project" {
    defaults = {
      number = "123456789012"
    }
  }
  mock_resource "google_service_account" {
    defaults = {
      email = "mock-sa@studio-prod.iam.gserviceaccount.com"
      name  = "projects/studio-prod/serviceAccounts/mock-sa@studio-prod.iam.gserviceaccount.com"
    }
  }
  mock_resource "google_cloudfunctions2_function" {
    defaults = {
      service_config = { service = "projects/studio-prod/locations/asia-east1/services/mock", uri = "https://mock-ingest.a.run.app" }
    }
  }
}

variables {
  project_id      = "studio-prod"
  region          = "asia-east1"
  game_server_url = "https://game.example.com/payments"
  # Any existing file: it is only hashed, and the mock provider uploads nothing.
  source_zip = "go.mod"
}

run "wiring" {
  command = apply

  assert {
    condition     = google_cloudfunctions2_function.fn["ingest"].build_config[0].entry_point == "Ingest" && google_cloudfunctions2_function.fn["deliver"].build_config[0].entry_point == "Deliver"
    error_message = "entry points must be the names registered with functions.HTTP: Ingest and Deliver"
  }
  assert {
    condition     = alltrue([for f in google_cloudfunctions2_function.fn : f.build_config[0].runtime == "go126"])
    error_message = "functions must run on go126"
  }
  assert {
    condition = alltrue([for f in google_cloudfunctions2_function.fn : sort(keys(f.service_config[0].environment_variables)) == sort([
      "DELIVER_LEASE", "DELIVER_TIMEOUT", "DELIVER_URL", "FIRESTORE_DATABASE", "GAME_SERVER_URL", "LADDER", "LADDER_COMPRESSION",
      "LOG_LEVEL", "PAYMENTS_COLLECTION", "PROJECT_ID", "TASKS_INVOKER_SA", "TASKS_OIDC_AUDIENCE", "TASKS_QUEUE",
    ])])
    error_message = "each function must get every plain variable infra/config reads"
  }
  assert {
    condition = alltrue([for f in google_cloudfunctions2_function.fn :
    sort([for s in f.service_config[0].secret_environment_variables : s.key]) == sort(["GAME_SERVER_SECRET", "INGEST_SECRETS", "PROVIDER_CONFIG"])])
    error_message = "secrets must reach the functions as secret environment variables"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["DELIVER_URL"] == "https://payrelay-deliver-123456789012.asia-east1.run.app"
    error_message = "DELIVER_URL must be Deliver's deterministic Cloud Run URL"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["TASKS_OIDC_AUDIENCE"] == google_cloudfunctions2_function.fn["deliver"].service_config[0].environment_variables["DELIVER_URL"]
    error_message = "the OIDC audience must be Deliver's URL"
  }
  assert {
    condition     = google_cloudfunctions2_function.fn["ingest"].service_config[0].environment_variables["TASKS_INVOKER_SA"] == google_service_account.invoker.email
    error_message = "tasks must be signed as the invoker account"
  }
  assert {
    condition     = alltrue([for f in google_cloudfunctions2_function.fn : f.service_config[0].service_account_email == google_service_account.runtime.email])
    error_message = "functions must run as the runtime account"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.ingest_public.member == "allUsers" && google_cloud_run_service_iam_member.ingest_public.role == "roles/run.invoker"
    error_message = "Ingest must be public"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.deliver_invoker.member == "serviceAccount:${google_service_account.invoker.email}" && google_cloud_run_service_iam_member.deliver_invoker.role == "roles/run.invoker"
    error_message = "only the invoker account may invoke Deliver"
  }
  assert {
    condition     = google_cloud_run_service_iam_member.deliver_invoker.service == google_cloudfunctions2_function.fn["deliver"].service_config[0].service
    error_message = "the invoker binding must be on Deliver's service"
  }
  assert {
    condition     = google_service_account_iam_member.runtime_acts_as_invoker.service_account_id == google_service_account.invoker.name && google_service_account_iam_member.runtime_acts_as_invoker.role == "roles/iam.serviceAccountUser" && google_service_account_iam_member.runtime_acts_as_invoker.member == "serviceAccount:${google_service_account.runtime.email}"
    error_message = "the runtime account must be able to act as the invoker account (CreateTask with an OIDC token)"
  }
  assert {
    condition     = google_cloud_tasks_queue_iam_member.runtime_enqueue.role == "roles/cloudtasks.enqueuer" && google_cloud_tasks_queue_iam_member.runtime_enqueue.name == google_cloud_tasks_queue.deliveries.name
    error_message = "the runtime account may enqueue on the deliveries queue only"
  }
  assert {
    condition     = google_cloud_tasks_queue.deliveries.retry_config[0].max_attempts == -1 && google_cloud_tasks_queue.deliveries.retry_config[0].max_retry_duration == "0s"
    error_message = "the queue must never drop a task: unlimited attempts, no retry deadline"
  }
  assert {
    condition     = google_cloud_tasks_queue.deliveries.retry_config[0].max_backoff == "60s"
    error_message = "the queue's backoff must be bounded"
  }
  assert {
    condition     = !contains(["roles/owner", "roles/editor", "roles/viewer"], google_project_iam_member.runtime_firestore.role)
    error_message = "no primitive roles"
  }
  assert {
    condition     = alltrue([for s in google_secret_manager_secret_iam_member.runtime_reads : s.role == "roles/secretmanager.secretAccessor"])
    error_message = "the runtime may only read the secrets"
  }
  assert {
    condition     = alltrue([for a in google_project_service.api : a.disable_on_destroy == false]) && length(google_project_service.api) == 9
    error_message = "the 9 APIs must be enabled and left enabled on destroy"
  }
  assert {
    condition     = google_firestore_database.payments.type == "FIRESTORE_NATIVE"
    error_message = "Firestore must be in native mode"
  }
  assert {
    condition     = output.ingest_url == "https://mock-ingest.a.run.app" && output.queue == google_cloud_tasks_queue.deliveries.id
    error_message = "outputs must give the Ingest URL and the queue"
  }
}

run "refuses_plain_http_game_server" {
  command = plan
  variables {
    game_server_url = "http://game.example.com/payments"
  }
  expect_failures = [var.game_server_url]
}

run "refuses_bad_ladder" {
  command = plan
  variables {
    ladder = "0s,soon"
  }
  expect_failures = [var.ladder]
}

run "refuses_bad_project" {
  command = plan
  variables {
    project_id = "Studio_Prod"
  }
  expect_failures = [var.project_id]
}
