<#
.SYNOPSIS
    Every VM on the host, with its checkpoint setting, checkpoints, disk chain and the .avhdx files beside its disks.
.DESCRIPTION
    Read-only. The backup DAG matches the inventory's VM patterns against these names; the
    checkpoint audit compares the .avhdx files beside the disks with each disk's chain down to
    its .vhdx (a differencing disk outside every chain is debris of a failed backup or merge).
.OUTPUTS
    One JSON document: clock_utc; running_job_vms (the VMs the running WSB job holds); vms, each with
    id, name, state, checkpoint_type, checkpoints (id, name, type, created_utc), disks (path, vhd_type,
    parent_path), chain (every disk file down to the .vhdx) and avhdx_files (read by hyperv_backup.hygiene).
#>
[CmdletBinding()]
param()
$now = (Get-Date).ToUniversalTime()
$job = Get-WBJob
@{
    clock_utc = $now.ToString('o')
    running_job_vms = @(if ($job -and "$($job.JobState)" -eq 'Running') { $job.JobItems | ForEach-Object { $_.Name } })
    vms = @(foreach ($vm in @(Get-VM)) {
        $disks = @(Get-VMHardDiskDrive -VM $vm | Get-VHD)
        $folders = @($disks | ForEach-Object { Split-Path -Parent $_.Path } | Select-Object -Unique)
        @{
            id = "$($vm.Id)"; name = $vm.Name; state = "$($vm.State)"; checkpoint_type = "$($vm.CheckpointType)"
            checkpoints = @(Get-VMSnapshot -VM $vm | ForEach-Object {
                @{ id = "$($_.Id)"; name = $_.Name; type = "$($_.SnapshotType)"; created_utc = $_.CreationTime.ToUniversalTime().ToString('o') } })
            disks = @($disks | ForEach-Object { @{ path = $_.Path; vhd_type = "$($_.VhdType)"; parent_path = $_.ParentPath } })
            chain = @(foreach ($disk in $disks) {
                $v = $disk
                while ($v) {
                    $v.Path
                    $v = $(if ($v.ParentPath) { Get-VHD -Path $v.ParentPath })
                }
            })
            avhdx_files = @($folders | ForEach-Object { Get-ChildItem -LiteralPath $_ -Filter '*.avhdx' -File } | ForEach-Object { $_.FullName })
        }
    })
}
