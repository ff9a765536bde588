import torch
import txwatch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=50)
x = torch.randn(32, 20)
batch = (x, (x[:, 0] > 0).long())


def loss_fn(model, batch):
    inputs, labels = batch
    return torch.nn.functional.cross_entropy(model(inputs), labels)


with txwatch.watch(model, optimizer, run="preflight-example", project="examples") as monitor:
    report = txwatch.preflight(model, optimizer, batch, loss_fn, scheduler=warmup, max_steps=1000, run=monitor)
    print(report)  # or rich.print(report) for the tables; report.ok is False when a check failed
    for step in range(200):  # trains exactly as it would have without preflight
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        warmup.step()
        optimizer.zero_grad()
        monitor.log(loss=loss)
