<#
.SYNOPSIS
    Where the backup of one VM stands: the WSB job (running or last), the VM, its checkpoints and disks.
.DESCRIPTION
    Read-only, cheap, and safe to repeat: the copy step polls it, and a worker that lost its
    connection re-attaches to the job through it instead of starting another. The job is this
    VM's: the running one if it holds the VM, else the VM's latest in the host's job history.
#>
param(
    [Parameter(Mandatory)] [string] $VMId
)
$vm = Get-VM -Id $VMId
$mine = { @($_.JobItems | Where-Object { $_.Name -ceq $vm.Name }).Count -gt 0 }
$job = Get-WBJob | Where-Object $mine
if (-not $job) { $job = Get-WBJob -Previous 20 | Where-Object $mine | Select-Object -First 1 }
@{
    clock_utc = (Get-Date).ToUniversalTime().ToString('o')
    job = $(if ($job) { @{
        job_state = "$($job.JobState)"; operation = $job.CurrentOperation; hresult = $job.HResult
        error_description = $job.ErrorDescription; version_id = $job.VersionId
        start_time_utc = $job.StartTime.ToUniversalTime().ToString('o')
        end_time_utc = $(if ($job.EndTime) { $job.EndTime.ToUniversalTime().ToString('o') })
        bytes_transferred = ($job.JobItems | Measure-Object -Property BytesTransferred -Sum).Sum
        bytes_total = ($job.JobItems | Measure-Object -Property TotalBytes -Sum).Sum
        vms = @($job.JobItems | ForEach-Object { $_.Name })
    } })
    vm = @{
        id = "$($vm.Id)"; name = $vm.Name; state = "$($vm.State)"; uptime_seconds = [int64]$vm.Uptime.TotalSeconds
        checkpoints = @(Get-VMSnapshot -VM $vm | ForEach-Object { @{ id = "$($_.Id)"; name = $_.Name; type = "$($_.SnapshotType)" } })
        disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object { @{ path = $_.Path } })
    }
}
